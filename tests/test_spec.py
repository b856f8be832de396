import pytest

from hiercompare import ModelSpec, SpecError
from hiercompare.spec import INTERCEPT, FixedTerm, GroupTerm

I = INTERCEPT


@pytest.mark.parametrize(
    "formula, fixed, groups",
    [
        ("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)",
         ["x1", "x2"],
         [(("market",), True, ("x1",), True), (("market", "submarket"), True, (), True)]),
        ("y ~ x1 + (1 | market)", ["x1"], [(("market",), True, (), True)]),
        ("y ~ x1 + (x1 | market)", ["x1"], [(("market",), True, ("x1",), True)]),  # intercept implied, as in lme4
        ("y ~ x1 + x2 + (1 + x1 + x2 | g)", ["x1", "x2"], [(("g",), True, ("x1", "x2"), True)]),
        ("y ~ x1 + (1 + x1 || market)", ["x1"], [(("market",), True, ("x1",), False)]),
        ("y ~ x1 + (0 + x1 | market)", ["x1"], [(("market",), False, ("x1",), True)]),
        ("y ~ x1 + (x1 - 1 | market)", ["x1"], [(("market",), False, ("x1",), True)]),
        ("y ~ x1 + (1 | market/submarket)", ["x1"],
         [(("market",), True, (), True), (("market", "submarket"), True, (), True)]),
        ("y ~ 1 + (1 | a/b/c)", [],
         [(("a",), True, (), True), (("a", "b"), True, (), True), (("a", "b", "c"), True, (), True)]),
    ],
)
def test_group_terms_parse(formula, fixed, groups):
    spec = ModelSpec.from_formula(formula)
    assert [t.name for t in spec.fixed] == fixed
    got = [(g.factor, g.intercept, g.slopes, g.correlated) for g in spec.groups]
    assert got == groups


def test_canonical_formula_and_levels():
    # (1 | market/submarket) adds a second market intercept: an error, it would duplicate a variance
    with pytest.raises(SpecError, match="more than once"):
        ModelSpec.from_formula("y ~ x1 + (1 + x1 | market) + (1 | market/submarket)")
    spec = ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)")
    assert spec.formula == "y ~ 1 + x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
    assert [lv.group for lv in spec.levels] == ["market", "market:submarket"]
    assert spec.levels[0].blocks == ((I, "x1"),)
    assert spec.variables == ("y", "x1", "x2", "market", "submarket")


def test_uncorrelated_blocks_and_merging():
    spec = ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 + x2 || g)")
    assert spec.levels[0].blocks == ((I,), ("x1",), ("x2",))
    spec = ModelSpec.from_formula("y ~ x1 + (1 | g) + (0 + x1 | g)")
    assert spec.levels[0].blocks == ((I,), ("x1",))
    assert spec.levels[0].terms == (I, "x1")


def test_fixed_part_variants():
    spec = ModelSpec.from_formula("y ~ C(region) + x1 + x1:x2 + (1 | g)")
    assert spec.fixed == (FixedTerm(("region",), True), FixedTerm(("x1",)), FixedTerm(("x1", "x2")))
    assert spec.intercept
    spec = ModelSpec.from_formula("y ~ x1*x2 + (1 | g)")
    assert [t.name for t in spec.fixed] == ["x1", "x2", "x1:x2"]
    assert not ModelSpec.from_formula("y ~ 0 + x1 + (1 | g)").intercept
    assert not ModelSpec.from_formula("y ~ x1 - 1 + (1 | g)").intercept
    assert ModelSpec.from_formula("y ~ 1 + (1 | g)").fixed == ()


@pytest.mark.parametrize("family", ["gaussian", "binomial", "poisson"])
def test_families(family):
    assert ModelSpec.from_formula("y ~ x + (1 | g)", family=family).family == family


@pytest.mark.parametrize(
    "formula, message",
    [
        ("y ~ x1 + (1 | g)", None),
        ("", "non-empty"),
        ("y x1", "exactly one '~'"),
        ("y ~ x ~ z", "exactly one '~'"),
        ("log(y) ~ x", r"function log\(\)"),
        ("y + z ~ x", "response must be a single column"),
        ("y ~ log(x)", r"function log\(\) .* not part of the formula grammar"),
        ('y ~ x + system("rm -rf /")', "unexpected text|not part of the formula grammar"),
        ("y ~ x; q()", "unexpected text"),
        ("y ~ x + `a b`", "unexpected text"),
        ("y ~ x + (1 | g", "unbalanced parentheses"),
        ("y ~ x + 1 | g", "wrapped in parentheses"),
        ("y ~ x + (1 | )", "no grouping factor"),
        ("y ~ x + ( | g)", "nothing before the bar"),
        ("y ~ x + (1 | g + h)", "column names joined by ':' or '/'"),
        ("y ~ x + (x:z | g)", "plain numeric columns"),
        ("y ~ x + (C(z) | g)", "plain numeric columns"),
        ("y ~ x + + z", "empty term"),
        ("y ~ x^2", "unexpected text"),
        ("y ~ x + 2", "only 0 and 1"),
        ("y ~ x - z", "only remove the intercept"),
        ("y ~ x + (1 | a:b) + (1 | a:c)", "crossed, not nested"),
        ("y ~ x + (1 + g | g)", "both as a grouping factor"),
        ("y ~ y + (1 | g)", "also appears as a predictor"),
        ("y ~ C(a, Sum) + (1 | g)", "unexpected text ', Sum\\)"),
        ("y ~ C(1) + (1 | g)", r"C\(\) takes exactly one column"),
    ],
)
def test_bad_formulas(formula, message):
    if message is None:
        ModelSpec.from_formula(formula)
        return
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_formula(formula)


def test_bad_family():
    with pytest.raises(SpecError, match="family 'gamma' is not supported"):
        ModelSpec.from_formula("y ~ x + (1 | g)", family="gamma")


def test_spec_is_frozen_and_hashable():
    a = ModelSpec.from_formula("y ~ x1 + (1 + x1 | g)")
    b = ModelSpec.from_formula("y~x1+(1+x1|g)")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(Exception):
        a.family = "poisson"
    assert isinstance(a.groups[0], GroupTerm)


def test_one_renderer_for_every_dialect():
    spec = ModelSpec.from_formula("y ~ 0 + C(region) + x1:x2 + (0 + x1 || g) + (1 | g:h)")
    assert spec.formula == spec.to_formula() == "y ~ 0 + C(region) + x1:x2 + (0 + x1 || g) + (1 | g:h)"
    assert spec.to_formula("lme4") == "y ~ 0 + region + x1:x2 + (0 + x1 || g) + (1 | g:h)"  # R: a factor column
    assert (spec.to_formula(fixed=["0", "Intercept", "hc_d1"])
            == "y ~ 0 + Intercept + hc_d1 + (0 + x1 || g) + (1 | g:h)")  # brms names its own coefficients
    assert ModelSpec.from_formula(spec.formula) == spec  # the canonical text parses back to the same spec
    with pytest.raises(ValueError, match="dialect must be one of"):
        spec.to_formula("stan")


def test_r_formula_sends_only_the_grammar():
    from hiercompare import rbridge

    spec = ModelSpec.from_formula("y ~ C(region) + x1*x2 + (1 + x1 | g) + (1 | g:h)")
    assert rbridge.r_formula(spec) == "y ~ 1 + region + x1 + x2 + x1:x2 + (1 + x1 | g) + (1 | g:h)"
    assert rbridge.r_formula(spec, fixed=["0", "Intercept"]) == "y ~ 0 + Intercept + (1 + x1 | g) + (1 | g:h)"
    for bad in (["0", "x1); system('ls'); (x1"], ["0", "x1 - 1"], ["x1 x2"], ["0 +"], ["log(x1)"], ["2"]):
        with pytest.raises(SpecError, match="refusing to send .* outside the formula grammar"):
            rbridge.r_formula(spec, fixed=bad)


@pytest.mark.parametrize(
    "formula, message",
    [  # formulae dropped each of these from the fixed part without a word (R refuses all but True, see _tokenize)
        ("y ~ x + 1e3 + (1 | g)", r"the number '1e3' in .* only 0 and 1"),
        ("y ~ x + 1 x2 + (1 | g)", r"'1' and 'x2' follow each other without an operator in .*; join terms with '\+'"),
        ("y ~ x + (1 | g) (1 | h)", r"'\)' and '\(' follow each other without an operator"),
        ("y ~ x + True + (1 | g)", r"'True' cannot be a column name in the formula .*: formulae reads it as the "
                                   r"Python value True; rename the column, e.g. data.rename\(columns=\{'True': 'True_'\}\)"),
        ("y ~ x + (1 + if | g)", r"'if' cannot be a column name .*: it is a reserved word in R"),
        ("NA ~ x + (1 | g)", "'NA' cannot be a column name"),
    ],
)
def test_what_formulae_dropped_silently_is_refused(formula, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_formula(formula)


def test_reserved_names_refused_in_a_spec_built_directly():
    with pytest.raises(SpecError, match="'None' cannot be a column name"):
        ModelSpec(response="y", intercept=True, fixed=(FixedTerm(("None",)),), groups=(GroupTerm(("g",), True, ()),))
