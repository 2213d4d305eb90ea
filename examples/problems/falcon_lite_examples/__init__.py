"""Example problem plugins for falcon-lite (entry-point group ``falcon_lite.problems``).

One module per problem, each with a factory ``make(**params) -> Problem``:

- `gaussian_linear`, `two_moons`, `slcp`: sbibm's tasks (Lueckmann et al. 2021), written
  from their published definitions;
- `signal`: a 1000-bin series, linear-Gaussian in its parameters (exact posterior);
- `slow`: a cheap model that takes a set time per simulation (scaling tests);
- `flaky`: a cheap model whose simulator raises on some calls and returns NaN rows on others.

Every factory names three observations, "1", "2" and "3" (see `observe`), so that
``{"problem": {"name": "two_moons"}}`` is a complete run.
"""
