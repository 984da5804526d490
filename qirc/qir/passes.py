"""Passes, the pass registry, pipelines and the pass manager.

A pass is a `ModulePass` subclass registered by name:

    @register_pass
    class DequantPush(ModulePass):
        \"\"\"Move quant.dcast below shape-only ops.

        Before: %d = quant.dcast %q ; %r = onnx.Reshape %d.  After: %r' = int.reshape %q ; %d = quant.dcast %r'.
        Precondition: the dcast has no other use.
        \"\"\"
        name = "dequant-push"
        signed: bool = False          # an option, set in a pipeline as dequant-push{signed=1}

        def run(self, module): ...

The first docstring line is the summary `qirc-opt --list-passes` shows; options are the annotated class attributes
(bool, int, float or str) with their defaults.  Passes are found in three places, loaded on first use: the built-in
ones below, the modules in `BUILTIN_PASS_MODULES` (imported by name, so that `qirc.qir` never imports the lowering
statically), and the entry-point group `qirc.passes` (each entry point a ModulePass subclass or a module that
registers passes when imported).

A pipeline is text: `parse_pipeline("canonicalize,dequant-push{signed=1},dce")`.  A named pipeline
(`register_pipeline("lower-to-int", "a,b,c")`) expands in place, so the pass manager still verifies between its
passes.  `PassManager` runs a list of passes with verification, IR dumps, timing and translation validation.
"""
from __future__ import annotations

import difflib
import importlib
import sys
import time
import typing
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, TextIO, Tuple, Type

import numpy as np

from .diagnostics import QircError, UsageError, VerifyError
from .ir import Module
from .types import TensorType

#: modules that register qirc's own passes when imported; imported by name so that `qirc.qir` has no static
#: dependency on them (the layering rule); a module that does not exist (yet) is skipped
BUILTIN_PASS_MODULES: Tuple[str, ...] = ("qirc.lowering", "qirc.backends.deeploy.legalize")
ENTRY_POINT_GROUP = "qirc.passes"

_OPTION_TYPES = (bool, int, float, str)


def _option_name(key: str) -> str:
    return key.replace("_", "-")


def _attribute_name(option: str) -> str:
    return option.replace("-", "_")


class ModulePass:
    """Base class of passes: set `name`, document the rewrite in the docstring, implement `run(module)`."""

    name: ClassVar[str] = ""
    #: options a pipeline text must give (their defaults mean "unset"): option name -> what to give, for the message
    required_options: ClassVar[Dict[str, str]] = {}

    def __init__(self, **options: Any):
        spec = self.options()
        for key, value in options.items():
            key = _option_name(key)
            if key not in spec:
                raise UsageError(_unknown_option_message(self.name, key, spec))
            typ, _default = spec[key]
            if isinstance(value, str) and typ is not str:
                value = parse_option_value(self.name, key, typ, value)
            elif typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise UsageError(f"pass '{self.name}' option '{key}' expects {typ.__name__}, got {value!r}")
            setattr(self, _attribute_name(key), value)

    @classmethod
    def options(cls) -> Dict[str, Tuple[type, Any]]:
        """Option name -> (type, default), from the annotated class attributes (base classes first).  Options are
        spelled like pass names, `signed_normalize: bool` as `signed-normalize`; constructors accept either."""
        out: Dict[str, Tuple[type, Any]] = {}
        for klass in reversed(cls.__mro__):
            if klass is object or "__annotations__" not in vars(klass):
                continue
            hints = typing.get_type_hints(klass)
            for key in vars(klass)["__annotations__"]:
                if key.startswith("_") or key == "name":
                    continue
                typ = hints.get(key)
                if typing.get_origin(typ) is ClassVar:
                    continue
                if typ not in _OPTION_TYPES:
                    raise TypeError(f"pass {cls.__name__}: option '{key}' must be bool, int, float or str, "
                                    f"not {typ!r}")
                if not hasattr(cls, key):
                    raise TypeError(f"pass {cls.__name__}: option '{key}' needs a default value")
                out[_option_name(key)] = (typ, getattr(cls, key))
        return out

    @classmethod
    def summary(cls) -> str:
        """The first line of the docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    def option_values(self) -> Dict[str, Any]:
        return {k: getattr(self, _attribute_name(k)) for k in self.options()}

    def spec(self) -> str:
        """The pipeline text that recreates this pass: `name` or `name{k=v,...}` (non-default options only)."""
        changed = {k: v for k, v in self.option_values().items() if v != self.options()[k][1]}
        if not changed:
            return self.name
        return self.name + "{" + ",".join(f"{k}={_format_value(v)}" for k, v in changed.items()) + "}"

    def run(self, module: Module) -> None:
        raise NotImplementedError(f"pass '{self.name}' does not implement run()")

    def __repr__(self) -> str:
        return f"<pass {self.spec()}>"


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, str) and (not v or any(c in v for c in " ,{}=\"'")):
        return '"' + v + '"'
    return str(v)


# ----- registry --------------------------------------------------------------------------------------------------
_PASSES: Dict[str, Type[ModulePass]] = {}
_PIPELINES: Dict[str, Tuple[str, str]] = {}  # name -> (pipeline text, summary)
_plugins_loaded = False


def register_pass(cls: Type[ModulePass]) -> Type[ModulePass]:
    """Class decorator: make a ModulePass subclass available by its `name`."""
    if not (isinstance(cls, type) and issubclass(cls, ModulePass)):
        raise TypeError(f"register_pass: {cls!r} is not a ModulePass subclass")
    if not cls.name:
        raise TypeError(f"register_pass: {cls.__name__} has no `name`")
    if not cls.summary():
        raise TypeError(f"register_pass: {cls.__name__} ('{cls.name}') has no docstring")
    cls.options()  # reject malformed options at registration, not at first use
    if cls.name in _PIPELINES:
        raise ValueError(f"pass name '{cls.name}' is already a named pipeline")
    existing = _PASSES.get(cls.name)
    # the same class imported again (a reloaded module) replaces itself; two different classes may not share a name
    if existing is not None and _qualname(existing) != _qualname(cls):
        raise ValueError(f"pass name '{cls.name}' registered twice ({_qualname(existing)} and {_qualname(cls)})")
    _PASSES[cls.name] = cls
    return cls


def register_pipeline(name: str, pipeline: str, summary: str) -> None:
    """Register a named pipeline: `name` in a pipeline expands to the passes of `pipeline`."""
    if name in _PASSES:
        raise ValueError(f"pipeline name '{name}' is already a pass")
    _PIPELINES[name] = (pipeline, summary)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_plugins() -> None:
    """Import the built-in pass modules and the `qirc.passes` entry points (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module_name in BUILTIN_PASS_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # only the module itself (or a missing parent package) may be absent; a broken import inside it is a bug
            if not e.name or not (module_name == e.name or module_name.startswith(e.name + ".")):
                raise
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party plugin must not take the built-in passes down with it
            warnings.warn(f"cannot load pass plugin {ep.name!r} ({ep.value}): {e}")
            continue
        if isinstance(obj, type) and issubclass(obj, ModulePass) and obj.name not in _PASSES:
            register_pass(obj)


def get_pass(name: str) -> Type[ModulePass]:
    """The pass class registered as `name`; UsageError naming close matches if there is none."""
    load_plugins()
    try:
        return _PASSES[name]
    except KeyError:
        raise UsageError(_unknown_pass_message(name)) from None


def all_passes() -> List[Type[ModulePass]]:
    """Every registered pass class, sorted by name."""
    load_plugins()
    return [_PASSES[k] for k in sorted(_PASSES)]


def all_pipelines() -> Dict[str, Tuple[str, str]]:
    """Named pipelines: name -> (pipeline text, summary), sorted by name."""
    load_plugins()
    return {k: _PIPELINES[k] for k in sorted(_PIPELINES)}


def _unknown_pass_message(name: str) -> str:
    names = sorted(set(_PASSES) | set(_PIPELINES))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    msg = f"unknown pass '{name}'"
    if close:
        msg += f" (did you mean {', '.join(repr(c) for c in close)}?)"
    return msg + f"; known passes: {', '.join(names) or 'none'}"


def _unknown_option_message(pass_name: str, key: str, spec: Dict[str, Tuple[type, Any]]) -> str:
    close = difflib.get_close_matches(key, list(spec), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    known = ", ".join(f"{k}: {t.__name__} = {_format_value(d)}" for k, (t, d) in spec.items()) or "none"
    return f"pass '{pass_name}' has no option '{key}'{hint}; options: {known}"


# ----- pipelines -------------------------------------------------------------------------------------------------
def parse_option_value(pass_name: str, key: str, typ: type, text: str) -> Any:
    """Parse an option's text as its declared type: bool (0/1/true/false), int, float or str."""
    t = text.strip()
    if typ is bool:
        low = t.lower()
        if low in ("1", "true", "on", "yes"):
            return True
        if low in ("0", "false", "off", "no"):
            return False
    elif typ is int:
        try:
            return int(t, 0)
        except ValueError:
            pass
    elif typ is float:
        try:
            return float(t)
        except ValueError:
            pass
    else:
        if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
            return t[1:-1]
        return t
    expected = "0, 1, true or false" if typ is bool else ("an integer" if typ is int else "a number")
    raise UsageError(f"pass '{pass_name}' option '{key}' expects {expected}, got {text!r}")


def _split_top_level(text: str, seps: str) -> List[str]:
    """Split at separator characters outside braces and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                raise UsageError(f"pipeline {text!r}: unmatched '}}' at offset {i}")
        elif depth == 0 and c in seps:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise UsageError(f"pipeline {text!r}: unclosed {'quote' if quote else chr(123)}")
    parts.append(text[start:])
    return parts


def parse_pipeline(text: str, _expanding: Tuple[str, ...] = ()) -> List[ModulePass]:
    """`"a,b{k=v,k2=1},c"` -> pass instances; UsageError for an unknown pass or option, or a bad value."""
    load_plugins()
    text = text.strip()
    if not text:
        return []
    passes: List[ModulePass] = []
    for item in _split_top_level(text, ","):
        item = item.strip()
        if not item:
            raise UsageError(f"pipeline {text!r}: empty pass name (stray ',')")
        name, options = item, {}
        if "{" in item:
            name, rest = item.split("{", 1)
            name = name.strip()
            if not rest.endswith("}"):
                raise UsageError(f"pipeline {text!r}: text after the options of '{name}'")
            for opt in _split_top_level(rest[:-1], ", "):
                if not opt.strip():
                    continue
                if "=" not in opt:
                    raise UsageError(f"pass '{name}' option {opt.strip()!r} is not of the form key=value")
                key, value = opt.split("=", 1)
                options[key.strip()] = value.strip()
        if name in _PIPELINES and name not in _PASSES:
            if options:
                raise UsageError(f"pipeline '{name}' takes no options")
            if name in _expanding:
                raise UsageError(f"pipeline '{name}' includes itself")
            passes.extend(parse_pipeline(_PIPELINES[name][0], _expanding + (name,)))
            continue
        cls = get_pass(name)
        spec = cls.options()
        typed = {}
        for key, value in options.items():
            if key not in spec:
                raise UsageError(_unknown_option_message(name, key, spec))
            typed[key] = parse_option_value(name, key, spec[key][0], value)
        for key, what in cls.required_options.items():
            if key not in typed:
                raise UsageError(f"pass '{name}' needs the option '{key}' ({what}): -p '{name}{{{key}=...}}'")
        passes.append(cls(**typed))
    return passes


# ----- translation validation ------------------------------------------------------------------------------------
def _interpreter():
    # imported lazily: the interpreter is large, and only validation needs it
    return importlib.import_module("qirc.qir.interpreter")


def _to_real(values: np.ndarray, t: TensorType) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(real values, scale broadcastable to them) of a runtime tensor; (None, None) for a plain integer tensor."""
    if t.is_quant:
        q = t.quant
        scale = q.scales_for(t.rank)
        return (np.asarray(values, np.float64) - q.zero_points_for(t.rank)) * scale, scale
    if t.is_float:
        return np.asarray(values, np.float64), None
    return None, None


def _convert_input(values: np.ndarray, src: TensorType, dst: TensorType) -> np.ndarray:
    """Carry a generated input from the `before` module's type to the `after` module's (a pass may retype inputs,
    e.g. unsigned storage moved to signed with a shifted zero point): dequantize, then quantize exactly."""
    if src == dst:
        return values
    real, _ = _to_real(values, src)
    if real is None:
        real = np.asarray(values, np.float64)
    if dst.is_float:
        return real.astype(dst.storage.np_dtype)
    if dst.is_quant:
        q = dst.quant
        stored = np.rint(real / q.scales_for(dst.rank)) + q.zero_points_for(dst.rank)
        return np.clip(stored, q.storage_min, q.storage_max).astype(np.int64)
    return np.asarray(np.rint(real), np.int64)


def _carry_input(value, array: np.ndarray, dst: TensorType, values_before: Dict[Any, np.ndarray]) -> np.ndarray:
    """The after-module's input for a before-module input `value` holding `array`.  When a pass moved the graph
    input's quantizer into the input type (a float input read by a quant.qcast of type `dst`), the before module's
    own qcast result is used, so that its rounding (round_add / add_round) carries over exactly."""
    if value.type != dst:
        for user in value.users:
            if user.name == "quant.qcast" and user.results[0].type == dst and user.results[0] in values_before:
                return values_before[user.results[0]]
    return _convert_input(array, value.type, dst)


def translation_validate(before: Module, after: Module, seed: int = 0, samples: int = 3) -> List[Dict[str, Any]]:
    """Interpret `before` and `after` on the same seeded random inputs; compare each output.

    Returns one dict per output of `before` (matched to `after` by name):
      output         the output name
      mode           "real": both sides dequantized to float units; "raw": a plain integer side, stored values
      max_abs_diff   largest |before - after| over all samples, in float units ("real") or raw units
      max_step_diff  the same in output steps (divided by the output scale) when a scale is known, else None
      samples        number of input samples compared
    """
    interp = _interpreter()
    outs_before = {o.attrs["name"]: o.operands[0].type for o in before.outputs}
    outs_after = {o.attrs["name"]: o.operands[0].type for o in after.outputs}
    missing = [n for n in outs_before if n not in outs_after]
    if missing:
        raise VerifyError(f"translation validation: output(s) {', '.join(map(repr, missing))} "
                          f"disappeared (after has {', '.join(map(repr, outs_after)) or 'none'})")
    in_before = {o.attrs["name"]: o.results[0].type for o in before.inputs}
    in_after = {o.attrs["name"]: o.results[0].type for o in after.inputs}
    if set(in_before) != set(in_after):
        raise VerifyError(f"translation validation: inputs changed from {sorted(in_before)} to {sorted(in_after)}")
    before_inputs = {o.attrs["name"]: o.results[0] for o in before.inputs}
    worst: Dict[str, Dict[str, Any]] = {}
    for k in range(samples):
        inputs = interp.random_inputs(before, seed + k)
        values_before = interp.run_values(before, inputs)
        got_before = {o.attrs["name"]: values_before[o.operands[0]] for o in before.outputs}
        inputs_after = {n: _carry_input(before_inputs[n], v, in_after[n], values_before) for n, v in inputs.items()}
        got_after = interp.run(after, inputs_after)
        for name, tb in outs_before.items():
            ta = outs_after[name]
            vb, va = np.asarray(got_before[name]), np.asarray(got_after[name])
            if vb.shape != va.shape:
                raise VerifyError(f"translation validation: output {name!r} changed shape from "
                                  f"{vb.shape} to {va.shape}")
            rb, sb = _to_real(vb, tb)
            ra, sa = _to_real(va, ta)
            if rb is not None and ra is not None:
                mode, diff = "real", np.abs(rb - ra)
                scale = sa if sa is not None else sb
                steps = diff / scale if scale is not None else None
            else:
                # an integer accumulator of unknown scale: compare stored values; if the other side is
                # quantized its stored values count in its steps
                mode, diff = "raw", np.abs(vb.astype(np.float64) - va.astype(np.float64))
                quant_side = ta if ta.is_quant else tb if tb.is_quant else None
                steps = diff if quant_side is not None else None
            rec = worst.setdefault(name, {"output": name, "mode": mode, "max_abs_diff": 0.0,
                                          "max_step_diff": None if steps is None else 0.0, "samples": 0})
            rec["samples"] += 1
            if diff.size:
                rec["max_abs_diff"] = max(rec["max_abs_diff"], float(diff.max()))
                if steps is not None:
                    rec["max_step_diff"] = max(rec["max_step_diff"] or 0.0, float(np.max(steps)))
    return [worst[n] for n in outs_before if n in worst]


def format_validation(pass_name: str, report: List[Dict[str, Any]]) -> str:
    lines = []
    for r in report:
        unit = "" if r["mode"] == "real" else " (raw integers)"
        steps = "" if r["max_step_diff"] is None else f", {r['max_step_diff']:.6g} step(s)"
        lines.append(f"// validate {pass_name}: output '{r['output']}': max |diff| {r['max_abs_diff']:.6g}{unit}"
                     f"{steps} over {r['samples']} sample(s)")
    return "\n".join(lines)


# ----- pass manager ----------------------------------------------------------------------------------------------
def _with_context(err: QircError, context: str) -> QircError:
    """The same error with `context` ("after pass 'x'") before its message, keeping file and location."""
    new = type(err)(f"{context}: {err.message}", file=err.file, line=err.line, column=err.column, loc=err.loc,
                    op=err.op)
    return new


class PassCrashed(RuntimeError):
    """A pass raised something other than a QircError: a bug in the pass, reported with its name."""


@dataclass
class PassTiming:
    name: str
    seconds: float


class PassManager:
    """Runs passes over a module in place.

    verify_each        verify before the first pass and after every pass ("after pass 'P': ..." on failure):
                       incrementally, only the ops changed since they last passed (`verifier.verify`); the
                       error is the one a full verification reports
    verify_full        verify every op each time instead (slower; also sees attribute arrays changed in place)
    print_ir_*         dump the IR to `out` before / after each pass, with MLIR-style header lines
    time_passes        print a table of seconds per pass (and for verification) to `out` at the end
    validate_each      interpret the module before and after each pass on seeded random inputs and print the
                       largest difference per output (see `translation_validate`); reports kept in `.validation`
    """

    def __init__(self, passes: Sequence[ModulePass], verify_each: bool = True, print_ir_before_all: bool = False,
                 print_ir_after_all: bool = False, time_passes: bool = False, validate_each: bool = False,
                 validate_seed: int = 0, validate_samples: int = 3, out: Optional[TextIO] = None,
                 elide_constants: bool = False, verify_full: bool = False):
        self.passes = list(passes)
        self.verify_each = verify_each
        self.verify_full = verify_full
        self.print_ir_before_all = print_ir_before_all
        self.print_ir_after_all = print_ir_after_all
        self.time_passes = time_passes
        self.validate_each = validate_each
        self.validate_seed = validate_seed
        self.validate_samples = validate_samples
        self.out = out
        self.elide_constants = elide_constants
        self.timings: List[PassTiming] = []
        self.validation: List[Tuple[str, List[Dict[str, Any]]]] = []

    @property
    def _out(self) -> TextIO:
        return self.out if self.out is not None else sys.stderr

    def _dump(self, when: str, name: str, module: Module) -> None:
        from .printer import print_module
        text = print_module(module, elide_constants=self.elide_constants)
        self._out.write(f"// -----// IR Dump {when} {name} //----- //\n{text}")
        if not text.endswith("\n"):
            self._out.write("\n")
        self._out.write("\n")

    def _verify(self, module: Module, context: Optional[str]) -> None:
        from .verifier import verify
        t0 = time.perf_counter()
        try:
            verify(module, incremental=not self.verify_full)
        except VerifyError as e:
            raise (_with_context(e, context) if context else e) from None
        finally:
            self.timings.append(PassTiming("(verify)", time.perf_counter() - t0))

    def run(self, module: Module) -> Module:
        """Run every pass on `module` (in place) and return it."""
        self.timings, self.validation = [], []
        total0 = time.perf_counter()
        if self.verify_each:
            self._verify(module, None)
        for p in self.passes:
            if self.print_ir_before_all:
                self._dump("Before", p.name, module)
            before = module.clone() if self.validate_each else None
            t0 = time.perf_counter()
            try:
                p.run(module)
            except QircError as e:
                raise _with_context(e, f"in pass '{p.name}'") from e
            except Exception as e:
                raise PassCrashed(f"pass '{p.name}' crashed: {type(e).__name__}: {e}") from e
            self.timings.append(PassTiming(p.name, time.perf_counter() - t0))
            if self.verify_each:
                self._verify(module, f"after pass '{p.name}'")
            if self.print_ir_after_all:
                self._dump("After", p.name, module)
            if before is not None:
                t0 = time.perf_counter()
                try:
                    report = translation_validate(before, module, self.validate_seed, self.validate_samples)
                except QircError as e:
                    raise _with_context(e, f"validating pass '{p.name}'") from e
                self.timings.append(PassTiming("(validate)", time.perf_counter() - t0))
                self.validation.append((p.name, report))
                self._out.write(format_validation(p.name, report) + "\n")
        if self.time_passes:
            self._out.write(self.timing_report(time.perf_counter() - total0))
        return module

    def timing_report(self, total: float) -> str:
        rows: Dict[str, float] = {}
        for t in self.timings:
            rows[t.name] = rows.get(t.name, 0.0) + t.seconds
        bar = "===" + "-" * 73 + "==="
        lines = [bar, "Pass execution timing report".center(79).rstrip(), bar,
                 f"  Total Execution Time: {total:.4f} seconds", "", "  ----Wall Time----  ----Name----"]
        for name, secs in rows.items():
            pct = 100.0 * secs / total if total > 0 else 0.0
            lines.append(f"  {secs:10.4f} ({pct:5.1f}%)  {name}")
        lines.append(f"  {total:10.4f} (100.0%)  Total")
        return "\n".join(lines) + "\n"


# ----- generic built-in passes -----------------------------------------------------------------------------------
@register_pass
class DeadCodeElimination(ModulePass):
    """Erase ops whose results are unused (transitively); graph inputs and outputs stay.

    Before: %a = int.add %x, %y (no users).  After: the op is gone, and so are producers left without users.
    Precondition: none (every op is pure).
    """

    name = "dce"

    def run(self, module: Module) -> None:
        module.erase_dead()


@register_pass
class Verify(ModulePass):
    """Run the verifier; fails with the first broken rule.

    Before and after: the module, unchanged.  Precondition: none.
    """

    name = "verify"

    def run(self, module: Module) -> None:
        from .verifier import verify
        verify(module)
