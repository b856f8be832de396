"""The model specification: WHAT model, never HOW it is fitted.

A :class:`ModelSpec` is parsed from an lme4-style formula. The formula is first checked against a strict
grammar (identifiers, ``0``/``1``, ``~ + - * : / | || ( )``, ``C(name)`` and ``offset(name)`` on the right, and
on the left a column name or the binomial ``cbind(successes, failures)`` / ``cbind(successes, n - successes)``);
anything else is rejected before it can reach R or any other backend. The fixed part and the left-hand side of every bar term are
then parsed with the ``formulae`` library; the grouping side of a bar term (``g``, ``a:b``, ``a/b``) is
expanded here, as lme4 does (``a/b`` = ``a`` + ``a:b``).

No backend library is imported in this module.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import SpecError

FAMILIES = ("gaussian", "binomial", "poisson", "negbinomial")  # negbinomial: NB2, var = mu + mu^2 / theta
DIALECTS = ("hiercompare", "lme4")
INTERCEPT = "(Intercept)"

_NAME = r"[A-Za-z][A-Za-z0-9_.]*"
_TOKEN = re.compile(
    rf"\s*(?:(?P<name>{_NAME})|(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)|(?P<op>\|\||[~+:/|()*\-]))")
_VALID_NAME = re.compile(rf"^{_NAME}$")
# lme4's binomial response with trials, read as one token so that its comma never enters the grammar
_CBIND = re.compile(rf"\s*cbind\s*\(\s*(?P<s>{_NAME})\s*,\s*(?:(?P<n>{_NAME})\s*-\s*(?P<s2>{_NAME})|(?P<f>{_NAME}))\s*\)")
CBIND_FORMS = "cbind(successes, failures) or cbind(successes, n - successes), each a column name"
OFFSET_FORM = "offset(column), a term of its own added with '+' (compute log(exposure) in the data first)"
# Names a formula cannot use as columns: R's reserved words (R rejects them, or drops TRUE silently) and the
# names formulae reads as Python values (it would drop a column called True without a word).
_RESERVED = frozenset("if else repeat while function for in next break TRUE FALSE NULL Inf NaN NA NA_integer_ "
                      "NA_real_ NA_character_ NA_complex_ True False None".split())


@dataclass(frozen=True)
class FixedTerm:
    """One fixed-effect term: a numeric column, a categorical column, or an interaction of numeric columns."""

    variables: tuple[str, ...]
    categorical: bool = False  # True for C(x); string columns are detected from the data

    @property
    def name(self) -> str:
        return ":".join(self.variables)

    def formula_text(self) -> str:
        return f"C({self.variables[0]})" if self.categorical else self.name


@dataclass(frozen=True)
class GroupTerm:
    """One bar term ``(intercept + slopes | factor)``; ``correlated=False`` for ``||``."""

    factor: tuple[str, ...]
    intercept: bool
    slopes: tuple[str, ...]
    correlated: bool = True

    @property
    def group(self) -> str:
        """The grouping factor as written in lme4's output (``market``, ``market:submarket``)."""
        return ":".join(self.factor)

    @property
    def terms(self) -> tuple[str, ...]:
        return ((INTERCEPT,) if self.intercept else ()) + self.slopes

    @property
    def blocks(self) -> tuple[tuple[str, ...], ...]:
        """Sets of terms that share one covariance block."""
        if self.correlated:
            return (self.terms,)
        return tuple((t,) for t in self.terms)

    def formula_text(self) -> str:
        lhs = " + ".join(("1" if self.intercept else "0",) + self.slopes)
        bar = "|" if self.correlated else "||"
        return f"({lhs} {bar} {self.group})"


@dataclass(frozen=True)
class GroupLevel:
    """All varying terms of one grouping factor, merged over the bar terms that name it."""

    factor: tuple[str, ...]
    blocks: tuple[tuple[str, ...], ...]

    @property
    def group(self) -> str:
        return ":".join(self.factor)

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(t for b in self.blocks for t in b)

    @property
    def slopes(self) -> tuple[str, ...]:
        return tuple(t for t in self.terms if t != INTERCEPT)

    @property
    def has_intercept(self) -> bool:
        return INTERCEPT in self.terms


@dataclass(frozen=True)
class ModelSpec:
    """A hierarchical model: response, fixed terms, group terms, family.

    Examples
    --------
    >>> spec = ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)")
    >>> [lv.group for lv in spec.levels]
    ['market', 'market:submarket']
    >>> spec.levels[0].terms
    ('(Intercept)', 'x1')
    """

    response: str
    intercept: bool
    fixed: tuple[FixedTerm, ...]
    groups: tuple[GroupTerm, ...]
    family: str = "gaussian"
    source: str = field(default="", compare=False)
    offsets: tuple[str, ...] = ()  # columns of the offset() terms, summed into ModelData.offset
    failures: str | None = None  # cbind(response, failures)
    trials: str | None = None  # cbind(response, trials - response)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SpecError(f"family {self.family!r} is not supported; choose one of {', '.join(FAMILIES)}")
        if self.failures is not None and self.trials is not None:
            raise SpecError(f"a binomial response has failures or trials, not both; write {CBIND_FORMS}")
        if self.has_trials and self.family != "binomial":
            raise SpecError(f"{self.response_text()} is a binomial response with trials; pass family='binomial' "
                            f"(family is {self.family!r})")
        if len(set(self.offsets)) != len(self.offsets):
            raise SpecError(f"offset({self.offsets[0]}) appears more than once; write each offset() term once")
        for name in self.variables:
            if not _VALID_NAME.match(name):
                raise SpecError(f"{name!r} is not a valid column name in a formula (letters, digits, '_' and '.')")
            _check_not_reserved(name, self.source or name)
        self._check_groups()

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_formula(cls, formula: str, family: str = "gaussian") -> "ModelSpec":
        """Parse an lme4-style formula.

        Supported: ``(1 | g)``, ``(1 + x | g)``, ``(1 + x1 + x2 | g)``, ``(1 + x || g)``, ``(0 + x | g)``,
        ``(1 | a/b)`` (= ``a`` + ``a:b``), ``(1 | a:b)``; fixed terms ``x``, ``C(x)``, ``x1:x2``, ``x1*x2``,
        ``0 +`` / ``- 1`` to drop the intercept.
        """
        if not isinstance(formula, str) or not formula.strip():
            raise SpecError("the formula must be a non-empty string such as 'y ~ x1 + (1 | market)'")
        tokens = _tokenize(formula)
        tilde = [i for i, (_, v) in enumerate(tokens) if v == "~"]
        if len(tilde) != 1:
            raise SpecError(f"a formula needs exactly one '~' (found {len(tilde)}) in {formula!r}")
        lhs, rhs = tokens[: tilde[0]], tokens[tilde[0] + 1 :]
        if len(lhs) != 1 or lhs[0][0] not in ("name", "cbind"):
            raise SpecError(
                f"the response must be a single column name, or for a binomial outcome with trials {CBIND_FORMS} "
                f"(got {_join(lhs)!r}); transform it in the data, e.g. df['log_y'] = np.log(df['y'])"
            )
        if not rhs:
            raise SpecError(f"the formula {formula!r} has nothing after '~'")
        if any(k == "cbind" for k, _ in rhs):
            raise SpecError(f"cbind() belongs on the left of '~' (the binomial response) in {formula!r}")
        response, failures, trials = _parse_response(lhs[0], formula)
        _check_parens(rhs, formula)
        _check_adjacent(rhs, formula)
        fixed_pieces, bar_pieces = _split_terms(rhs, formula)
        offsets, fixed_pieces = _take_offsets(fixed_pieces, formula)
        intercept, fixed = _parse_fixed(fixed_pieces, formula)
        groups: list[GroupTerm] = []
        for piece in bar_pieces:
            groups.extend(_parse_bar(piece, formula))
        return cls(
            response=response,
            intercept=intercept,
            fixed=tuple(fixed),
            groups=tuple(groups),
            family=family,
            source=formula,
            offsets=offsets,
            failures=failures,
            trials=trials,
        )

    # ------------------------------------------------------------------ derived views
    @property
    def formula(self) -> str:
        """Canonical formula text, rebuilt from the parsed parts (never the user's string)."""
        return self.to_formula()

    def to_formula(self, dialect: str = "hiercompare", fixed: Sequence[str] | None = None,
                   response: str | None = None) -> str:
        """Formula text rebuilt from the parsed parts (never the user's string): the one renderer.

        Parameters
        ----------
        dialect : {"hiercompare", "lme4"}
            ``"hiercompare"``: the canonical text (:attr:`formula`), categorical terms as ``C(x)``;
            ``"lme4"``: categorical terms bare, as R writes them for a factor column (the R backends send such
            columns as factors).
        fixed : sequence of str, optional
            The fixed part written term by term in place of the spec's intercept and fixed terms, for an engine
            that names its coefficients its own way (brms: ``["0", "Intercept", "x1", "hc_d3"]``). The
            response and the group terms are the spec's.
        response : str, optional
            The left of ``~`` in place of :meth:`response_text`, for an engine that writes binomial trials its
            own way (brms: ``"k | trials(hc_d_trials)"``).

        Text meant for R goes through :func:`hiercompare.rbridge.r_formula`, which checks it against the
        grammar before R sees it.

        >>> ModelSpec.from_formula("y ~ C(region) + (1 + x | g)").to_formula("lme4")
        'y ~ 1 + region + (1 + x | g)'
        """
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
        if fixed is None:
            fixed = ["1" if self.intercept else "0"]
            fixed += [t.formula_text() if dialect == "hiercompare" else t.name for t in self.fixed]
        parts = list(fixed) + [f"offset({o})" for o in self.offsets] + [g.formula_text() for g in self.groups]
        return f"{response or self.response_text(dialect)} ~ " + " + ".join(parts)

    def response_text(self, dialect: str = "hiercompare") -> str:
        """The left of ``~``: the response column, or the binomial ``cbind(...)``.

        In the lme4 dialect (text for R) ``cbind(s, n - s)`` becomes ``cbind(s, <failures_column>)``: the
        failures reach R as a data column that hiercompare computes (:attr:`failures_column`), never as code.

        >>> ModelSpec.from_formula("cbind(k, n - k) ~ 1 + (1 | g)", family="binomial").response_text("lme4")
        'cbind(k, n_minus_k)'
        """
        if self.failures is not None:
            return f"cbind({self.response}, {self.failures})"
        if self.trials is not None:
            second = f"{self.trials} - {self.response}" if dialect == "hiercompare" else self.failures_column
            return f"cbind({self.response}, {second})"
        return self.response

    @property
    def has_trials(self) -> bool:
        """True for a binomial response written with ``cbind()`` (trials per row), False for a 0/1 response."""
        return self.failures is not None or self.trials is not None

    @property
    def failures_column(self) -> str | None:
        """The column that holds the failures: ``failures`` for ``cbind(s, f)``; for ``cbind(s, n - s)`` a name
        derived from both (``n_minus_s``, underscores appended until it is no column of the model), which
        :func:`hiercompare.design.prepare` adds to ``ModelData.data``. ``None`` without ``cbind()``."""
        if self.failures is not None:
            return self.failures
        if self.trials is None:
            return None
        name = f"{self.trials}_minus_{self.response}"
        while name in self.variables:
            name += "_"
        return name

    @property
    def levels(self) -> tuple[GroupLevel, ...]:
        """Distinct grouping factors, each with its covariance blocks, coarse (fewest columns) first.

        The final root-to-leaf order is decided by :class:`~hiercompare.hierarchy.Hierarchy` from the data.
        """
        order: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for g in self.groups:
            order.setdefault(g.factor, []).extend(g.blocks)
        out = []
        for factor, blocks in order.items():
            out.append(GroupLevel(factor=factor, blocks=tuple(blocks)))
        return tuple(sorted(out, key=lambda lv: len(lv.factor)))

    @property
    def fixed_variables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for t in self.fixed for v in t.variables))

    @property
    def grouping_variables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for g in self.groups for v in g.factor))

    @property
    def slope_variables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for g in self.groups for v in g.slopes))

    @property
    def response_variables(self) -> tuple[str, ...]:
        """The columns of the left of ``~``: the response, then the failures or trials column of ``cbind()``."""
        extra = (self.failures,) if self.failures is not None else (self.trials,) if self.trials is not None else ()
        return (self.response,) + extra

    @property
    def variables(self) -> tuple[str, ...]:
        """Every column the model reads, response first (then cbind's second column, predictors, offsets,
        grouping columns)."""
        return tuple(
            dict.fromkeys(self.response_variables + self.fixed_variables + self.slope_variables + self.offsets
                          + self.grouping_variables)
        )

    def to_dict(self) -> dict:
        return {"formula": self.formula, "family": self.family, "source": self.source}

    # ------------------------------------------------------------------ checks
    def _check_groups(self) -> None:
        seen: dict[tuple[str, ...], set[str]] = {}
        for g in self.groups:
            if not g.terms:
                raise SpecError(f"the group term {g.formula_text()} has no varying term")
            used = seen.setdefault(g.factor, set())
            for t in g.terms:
                if t in used:
                    raise SpecError(f"{t} varies by {g.group} more than once; list each varying term once per factor")
                used.add(t)
            overlap = set(g.factor) & (set(self.response_variables) | set(g.slopes) | set(self.offsets))
            if overlap:
                raise SpecError(f"{sorted(overlap)} is used both as a grouping factor and as a variable")
        for r in self.response_variables:
            if r in self.fixed_variables + self.slope_variables + self.offsets:
                raise SpecError(f"the response column {r!r} also appears as a predictor or offset")
        if len(set(self.response_variables)) < len(self.response_variables):
            raise SpecError(f"{self.response_text()} names the same column twice; write {CBIND_FORMS}")
        factors = sorted({g.factor for g in self.groups}, key=len)
        for i, a in enumerate(factors):
            for b in factors[i + 1 :]:
                if len(a) > 1 and not set(a) <= set(b):
                    raise SpecError(
                        f"the grouping factors {':'.join(a)} and {':'.join(b)} are crossed, not nested: "
                        "hiercompare fits nested trees (national -> market -> submarket). "
                        f"Write the finer factor as an interaction that contains the coarser one, "
                        f"e.g. (1 | {':'.join(a)}) + (1 | {':'.join(dict.fromkeys(a + b))})"
                    )


# ---------------------------------------------------------------------- helpers
def _tokenize(formula: str) -> list[tuple[str, str]]:
    """The formula's tokens ``(kind, text)``, kind ``name``, ``num`` or ``op``: the strict grammar's gate.

    Written by hand, not taken from formulae (issue 15 asked to use formulae's parser where it can do the
    job). Measured with formulae 0.9.0 on the formulas of tests/test_spec.py and a few more (each also
    checked against R 4.2's own parser or model.frame):

    * ``formulae.model_description`` accepts 17 of the 25 formulas tests/test_spec.py expects refused
      (``log(y) ~ x``, ``y ~ x + system("rm -rf /")``, ``y x1`` without a ``~``, ``y ~ x + (1 | g + h)``,
      ``y ~ x + 2``, ``y ~ x - z``, ``y ~ C(a, Sum)``, ...), and refuses two that lme4 fits:
      ``(1 + x1 || market)`` and ``(x1 - 1 | market)``.
    * Its tokenizer (``formulae.scanner.Scanner``) refuses only 4 of those 25 (empty, two ``~``, ``;``,
      ``^``); it scans strings, backquoted names, brackets, braces, commas and comparison operators, all of
      which would need refusing again token by token. Its tokens carry no position in the text, so the
      message could no longer quote the offending rest of the formula (``unexpected text ', Sum) + ...'``);
      it reads ``| |`` as the same two tokens as ``||`` (R refuses the first); it takes Unicode letters and
      digits into names (``x²``), outside the ASCII names R code is built from here; it turns ``True``,
      ``False`` and ``None`` into Python values, so a column called ``True`` (a valid R name) vanished from
      the model without a word; and an unterminated backquote (``y ~ x + `abc``) crashes it with an
      IndexError instead of a scan error.

    So the grammar check stays here and formulae parses what it parses well: the fixed part and the left of
    each bar, after this check (see :func:`_parse_fixed` and :func:`_parse_bar`). The same measurement found
    formulae dropping ``1e3``, ``True`` and the second of two juxtaposed names (``x + 1 x2``) from the fixed
    part, which R refuses (or, for ``True``, keeps); numbers in exponent form now reach the number check,
    reserved and Python-literal names are refused (:data:`_RESERVED`) and juxtaposed operands are refused by
    :func:`_check_adjacent`.
    """
    pos, out = 0, []
    text = formula.rstrip()
    while pos < len(text):
        m = _CBIND.match(text, pos)
        if m:
            out.append(("cbind", m.group(0).strip()))
            pos = m.end()
            continue
        m = _TOKEN.match(text, pos)
        if m and m.group("name") == "cbind":
            raise SpecError(f"cbind() in {formula!r} must be written {CBIND_FORMS}; compute anything else in the data")
        if not m or m.end() == pos:
            bad = text[pos:].strip()[:20]
            raise SpecError(
                f"unexpected text {bad!r} in formula {formula!r}: only column names, 0/1, C(name) and the operators "
                "~ + - * : / | || ( ) are allowed; transform variables in the data instead"
            )
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    for i, (kind, val) in enumerate(out):
        if kind == "num" and val not in ("0", "1"):
            raise SpecError(f"the number {val!r} in {formula!r} is not allowed: only 0 and 1 (intercept) are")
        if kind == "name" and i + 1 < len(out) and out[i + 1][1] == "(":
            if val not in ("C", "offset"):
                raise SpecError(
                    f"the function {val}() in {formula!r} is not part of the formula grammar: "
                    "only C(column) and offset(column) are (and cbind() on the left for a binomial response); "
                    "compute transformed columns in the data first"
                )
            if not (i + 3 < len(out) and out[i + 2][0] == "name" and out[i + 3][1] == ")"):
                if val == "offset":
                    raise SpecError(f"offset() takes exactly one column name in {formula!r}: write {OFFSET_FORM}, "
                                    "e.g. df['log_holders'] = np.log(df['Holders']) and offset(log_holders)")
                raise SpecError(f"C() takes exactly one column name, as in C(region), in {formula!r}")
        elif kind == "name":
            _check_not_reserved(val, formula)
    return out


def _parse_response(token: tuple[str, str], formula: str) -> tuple[str, str | None, str | None]:
    """(response, failures, trials) from the left of ``~``: a name, or a ``cbind(...)`` token."""
    kind, text = token
    if kind == "name":
        return text, None, None
    m = _CBIND.fullmatch(text)
    s, f, n, s2 = m.group("s"), m.group("f"), m.group("n"), m.group("s2")
    for name in (s, f, n):
        if name is not None:
            _check_not_reserved(name, formula)
    if n is not None and s2 != s:
        raise SpecError(f"in {text!r} the subtracted column must be the successes {s!r}: write cbind({s}, {n} - {s}) "
                        f"(the accepted forms are {CBIND_FORMS})")
    return s, f, n


def _take_offsets(pieces, formula):
    """Split the ``offset(column)`` terms from the fixed pieces: (offset columns, the other pieces)."""
    offsets, rest = [], []
    for p in pieces:
        vals = [v for _, v in p]
        if "offset" in vals and p[vals.index("offset")][0] == "name" and vals[vals.index("offset") + 1 : vals.index("offset") + 2] == ["("]:
            if len(vals) != 4 or vals[0] != "offset":
                raise SpecError(f"{_join(p)!r} in {formula!r}: write {OFFSET_FORM}")
            offsets.append(vals[2])
            continue
        rest.append(p)
    return tuple(offsets), rest


def _check_not_reserved(name: str, formula: str) -> None:
    if name in _RESERVED:
        why = f"formulae reads it as the Python value {name}" if name in ("True", "False", "None") else (
            "it is a reserved word in R")
        raise SpecError(f"{name!r} cannot be a column name in the formula {formula!r}: {why}; rename the column, "
                        f"e.g. data.rename(columns={{{name!r}: {name + '_'!r}}})")


def _check_adjacent(tokens: list[tuple[str, str]], formula: str) -> None:
    """Two operands in a row (``x1 x2``, ``1 x``, ``(1 | g) (1 | h)``) are a syntax error in R."""
    for (k1, v1), (k2, v2) in zip(tokens, tokens[1:]):
        ends = k1 in ("name", "num") or v1 == ")"
        starts = k2 in ("name", "num") or v2 == "("
        if ends and starts and not (k1 == "name" and v2 == "("):  # name( is a call, checked by _tokenize
            raise SpecError(f"{v1!r} and {v2!r} follow each other without an operator in {formula!r}; "
                            "join terms with '+' (or ':' for an interaction)")


def _join(tokens: list[tuple[str, str]]) -> str:
    text = ""
    for kind, val in tokens:
        if kind == "op" and val not in "()":
            text += f" {val} "
        else:
            text += val
    return re.sub(r"\s+", " ", text).strip()


def _check_parens(tokens: list[tuple[str, str]], formula: str) -> None:
    depth = 0
    for _, v in tokens:
        depth += v == "("
        depth -= v == ")"
        if depth < 0:
            raise SpecError(f"unbalanced parentheses in {formula!r}")
    if depth:
        raise SpecError(f"unbalanced parentheses in {formula!r}")


def _split_terms(tokens, formula):
    pieces, cur, depth = [], [], 0
    for tok in tokens:
        v = tok[1]
        if v == "(":
            depth += 1
        elif v == ")":
            depth -= 1
        if v == "+" and depth == 0:
            pieces.append(cur)
            cur = []
        else:
            cur.append(tok)
    pieces.append(cur)
    if any(not p for p in pieces):
        raise SpecError(f"empty term (two '+' in a row, or a trailing '+') in {formula!r}")
    fixed, bars = [], []
    for p in pieces:
        if p[0][1] == "(" and p[-1][1] == ")" and any(v in ("|", "||") for _, v in p):
            bars.append(p[1:-1])
        elif any(v in ("|", "||") for _, v in p):
            raise SpecError(f"a bar term must be wrapped in parentheses, as in (1 | market); got {_join(p)!r}")
        else:
            fixed.append(p)
    return fixed, bars


def _parse_fixed(pieces, formula):
    from formulae import model_description

    text_parts = []
    intercept = True
    for p in pieces:
        vals = [v for _, v in p]
        if vals in (["0"], ["-", "1"]) or (len(vals) >= 2 and vals[-2:] == ["-", "1"] and "-" not in vals[:-2]):
            intercept = False
            rest = p[:-2] if vals[-2:] == ["-", "1"] else []
            if rest:
                text_parts.append(_join(rest))
            continue
        if vals == ["1"]:
            continue
        if "-" in vals:
            raise SpecError(f"'-' may only remove the intercept ('- 1'); got {_join(p)!r} in {formula!r}")
        if any(v in ("/",) for v in vals) or "(" in vals and vals[0] != "C":
            raise SpecError(f"the fixed term {_join(p)!r} is not supported; use x, C(x), x1:x2 or x1*x2")
        text_parts.append(_join(p))
    if not text_parts:
        return intercept, []
    try:
        desc = model_description("y__ ~ " + " + ".join(text_parts))
    except Exception as exc:  # formulae's own parse error, re-raised in our hierarchy
        raise SpecError(f"cannot parse the fixed part of {formula!r}: {exc}") from exc
    terms = []
    for t in desc.common_terms:
        if type(t).__name__ == "Intercept":
            continue
        comps = list(t.components)
        names = []
        categorical = False
        for c in comps:
            kind = type(c).__name__
            if kind == "Variable":
                names.append(c.name)
            elif kind == "Call":
                inner = re.fullmatch(rf"C\(({_NAME})\)", str(c.name).replace(" ", ""))
                if not inner:
                    raise SpecError(f"unsupported call {c.name!r} in {formula!r}")
                names.append(inner.group(1))
                categorical = True
            else:
                raise SpecError(f"unsupported fixed term {t!r} in {formula!r}")
        if categorical and len(names) > 1:
            raise SpecError(
                f"interactions with a categorical term ({':'.join(names)}) are not supported yet; "
                "build the interaction column in the data"
            )
        term = FixedTerm(variables=tuple(names), categorical=categorical)
        if term in terms:
            continue
        terms.append(term)
    return intercept, terms


def _parse_bar(tokens, formula):
    from formulae import model_description

    bars = [i for i, (_, v) in enumerate(tokens) if v in ("|", "||")]
    if len(bars) != 1:
        raise SpecError(f"a bar term needs exactly one '|' or '||': ({_join(tokens)}) in {formula!r}")
    b = bars[0]
    correlated = tokens[b][1] == "|"
    lhs, rhs = tokens[:b], tokens[b + 1 :]
    if not lhs:
        raise SpecError(f"nothing before the bar in ({_join(tokens)}); write (1 | group) for a varying intercept")
    if not rhs:
        raise SpecError(f"no grouping factor after the bar in ({_join(tokens)}) in {formula!r}")
    # grouping side: name ((':' | '/') name)*
    if rhs[0][0] != "name" or rhs[-1][0] != "name" or any(
        (i % 2 == 0 and k != "name") or (i % 2 == 1 and v not in (":", "/")) for i, (k, v) in enumerate(rhs)
    ):
        raise SpecError(
            f"the grouping side {_join(rhs)!r} must be column names joined by ':' or '/', as in "
            "market, market:submarket or market/submarket"
        )
    nests, cur = [], []
    for k, v in rhs:
        if k == "name":
            cur.append(v)
        elif v == "/":
            nests.append(tuple(cur))
            cur = []
    nests.append(tuple(cur))
    factors, acc = [], ()
    for part in nests:
        acc = acc + part
        factors.append(acc)
    # varying side, parsed by formulae
    vals = [v for _, v in lhs]
    if any(v in ("(", ")", "*", "/", ":") for v in vals):
        raise SpecError(
            f"varying terms must be plain numeric columns (got {_join(lhs)!r}); interactions and C() are not "
            "supported on the left of the bar"
        )
    intercept = True
    parts = []
    for piece in _split_terms(lhs, formula)[0]:
        pv = [v for _, v in piece]
        if pv == ["0"] or pv == ["-", "1"]:
            intercept = False
        elif pv == ["1"]:
            intercept = True
        elif len(pv) == 3 and pv[1:] == ["-", "1"]:
            intercept = False
            parts.append(pv[0])
        elif len(pv) == 1 and piece[0][0] == "name":
            parts.append(pv[0])
        else:
            raise SpecError(f"cannot read the varying term {_join(piece)!r} in {formula!r}")
    slopes: tuple[str, ...] = ()
    if parts:
        desc = model_description("y__ ~ " + " + ".join(parts))
        slopes = tuple(c.name for t in desc.common_terms if type(t).__name__ == "Term" for c in t.components)
    return [GroupTerm(factor=f, intercept=intercept, slopes=slopes, correlated=correlated) for f in factors]
