"""Matmul and convolution FLOPs of a traced JAX program, the same on every backend.

Why not only XLA's ``compiled.cost_analysis()``: on GPU, XLA hands matmuls and convolutions to cuBLAS /
cuDNN as custom calls, and its cost analysis does not count them — the FLOPs (and MFU) it reports there
are a fraction of the truth. Counting ``dot_general`` and ``conv_general_dilated`` in the jaxpr gives the
model FLOPs the usual MFU definition uses, including rematerialized recomputation and loop bodies times
their trip counts, whatever the backend. Elementwise work is not counted.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jex_core


def dot_flops(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars)
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  free = math.prod(d for i, d in enumerate(rhs.shape) if i not in rhs_contract and i not in rhs_batch)
  return 2 * math.prod(lhs.shape) * free


def conv_flops(eqn) -> int:
  """2 x outputs x (input features per group x kernel window) = 2 x outputs x |rhs| / out features."""
  rhs = eqn.invars[1].aval
  out = eqn.outvars[0].aval
  out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
  return 2 * math.prod(out.shape) * math.prod(rhs.shape) // rhs.shape[out_feature_dim]


# Call-like primitives whose bodies are inlined for counting, so identical work in two calls is seen as
# one (XLA inlines them too before eliminating common subexpressions).
_INLINED = (
  "pjit",
  "jit",
  "closed_call",
  "core_call",
  "custom_jvp_call",
  "custom_vjp_call",
  "custom_vjp_call_jaxpr",
  "checkpoint",
  "remat",
)


# Primitives that are the identity on values (XLA drops them), so their outputs are their inputs.
_IDENTITY = ("stop_gradient", "copy", "copy_p")


def _body(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    if key in eqn.params:
      return eqn.params[key]
  return None


def _nested(eqn):
  """(jaxpr, multiplier) for each program nested in a loop-like equation."""
  name, params = eqn.primitive.name, eqn.params
  if name == "cond":
    # One branch runs; count the most expensive.
    yield max(params["branches"], key=jaxpr_flops), 1
    return
  mult = 1
  if name == "scan":
    mult = params["length"]
  elif name == "shard_map" and "mesh" in params:
    mult = params["mesh"].size  # the body sees one device's shapes
  for value in params.values():
    for j in value if isinstance(value, list | tuple) else (value,):
      if isinstance(j, jex_core.ClosedJaxpr | jex_core.Jaxpr):
        yield j, mult


class _Counter:
  """Walks a jaxpr the way XLA will see it: calls inlined, each distinct computation once, dead ones not.

  A value is named by what computes it: (primitive, parameters, names of the inputs). An equation whose
  name was seen before is a common subexpression — XLA computes it once, so it is counted once; and only
  work that the outputs depend on counts (XLA removes the rest, e.g. the gradient a custom VJP computes
  for an input behind a stop_gradient). Liveness reaches into loops: a scan's loop-carried value that
  nothing after the loop reads, and that no live value in the body reads, costs nothing (XLA removes it
  from the while loop), and likewise for a shard_map's unused outputs. This is what makes the count match
  the compiled program where a custom VJP computes gradients that a stop_gradient then discards (the
  head statistics of routing.routed_losses), with or without label chunks.
  """

  def __init__(self):
    self.names: dict = {}
    self.nodes: dict = {}  # key -> (equation, input names, output names)
    self.producer: dict = {}  # output name -> (key, output index)
    self.count = 0

  def fresh(self):
    self.count += 1
    return ("value", self.count)

  def name(self, v):
    if isinstance(v, jex_core.Literal):
      return ("literal", repr(v.val))
    if v not in self.names:
      self.names[v] = self.fresh()
    return self.names[v]

  def walk(self, jaxpr, inputs=None):
    consts = getattr(jaxpr, "consts", ())
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for v, c in zip(jaxpr.constvars, consts):
      self.names[v] = ("const", id(c))
    for v, n in zip(jaxpr.invars, inputs or ()):
      self.names[v] = n
    for eqn in jaxpr.eqns:
      ins = tuple(self.name(v) for v in eqn.invars)
      body = _body(eqn) if eqn.primitive.name in _INLINED else None
      if body is not None:
        outs = self.walk(body, ins)
      elif eqn.primitive.name in _IDENTITY:
        outs = ins
      else:
        key = (eqn.primitive.name, repr(sorted(eqn.params.items(), key=lambda kv: kv[0])), ins)
        if key not in self.nodes:
          # Fresh small names (not the key itself: names nest, and nested keys grow without bound).
          outs = tuple(self.fresh() for _ in eqn.outvars)
          self.nodes[key] = (eqn, ins, outs)
          self.producer.update((n, (key, i)) for i, n in enumerate(outs))
        outs = self.nodes[key][2]
      for v, n in zip(eqn.outvars, outs):
        self.names[v] = n
    return tuple(self.name(v) for v in jaxpr.outvars)

  def liveness(self, outputs) -> tuple[int, set]:
    """(FLOPs of the work ``outputs`` depend on, every name they depend on)."""
    live_outs: dict = {}  # key -> indices of its live outputs
    cost: dict = {}  # key -> (FLOPs, needed inputs) for its current live outputs
    reached, stack = set(), list(outputs)
    while stack:
      name = stack.pop()
      reached.add(name)
      if name not in self.producer:
        continue
      key, i = self.producer[name]
      if i in live_outs.setdefault(key, set()):
        continue
      live_outs[key].add(i)
      eqn, ins, _ = self.nodes[key]
      cost[key] = _eqn_liveness(eqn, frozenset(live_outs[key]))
      stack.extend(n for j, n in enumerate(ins) if j in cost[key][1] and n not in reached)
    return sum(flops for flops, _ in cost.values()), reached


def _sub_liveness(jaxpr, live_outputs) -> tuple[int, set]:
  """(FLOPs, indices of the inputs used) of a nested program when only ``live_outputs`` are read."""
  counter = _Counter()
  ins = tuple(counter.fresh() for _ in getattr(jaxpr, "jaxpr", jaxpr).invars)
  outs = counter.walk(jaxpr, ins)
  total, reached = counter.liveness([outs[i] for i in sorted(live_outputs)])
  return total, {i for i, n in enumerate(ins) if n in reached}


def _eqn_liveness(eqn, live_outputs: frozenset) -> tuple[int, set]:
  """(FLOPs, indices of the inputs needed) of one equation when only ``live_outputs`` are read."""
  name, params = eqn.primitive.name, eqn.params
  if name == "scan":
    # Carries are live if read after the loop or by live work in the body: iterate to a fixed point.
    consts, carries = params["num_consts"], params["num_carry"]
    live = set(live_outputs)
    while True:
      body_flops, used = _sub_liveness(params["jaxpr"], live)
      grown = live | {i - consts for i in used if consts <= i < consts + carries}
      if grown == live:
        return params["length"] * body_flops, used
      live = grown
  if name == "shard_map" and "mesh" in params:
    body_flops, used = _sub_liveness(params["jaxpr"], live_outputs)
    return params["mesh"].size * body_flops, used  # the body sees one device's shapes
  return _own_flops(eqn), set(range(len(eqn.invars)))


def _own_flops(eqn) -> int:
  name = eqn.primitive.name
  if name == "dot_general":
    return dot_flops(eqn)
  if name == "conv_general_dilated":
    return conv_flops(eqn)
  return sum(m * jaxpr_flops(j) for j, m in _nested(eqn))


def jaxpr_flops(jaxpr) -> int:
  """Matmul + convolution FLOPs of a (closed) jaxpr, over all devices.

  Common subexpressions count once, dead code not at all. A while loop whose trip count is unknown counts
  its body once (``fori_loop`` with static bounds is a scan and counts exactly).
  """
  counter = _Counter()
  return counter.liveness(counter.walk(jaxpr))[0]


def count(fn, *args) -> int:
  """Matmul + convolution FLOPs of one call ``fn(*args)`` (args may be ShapeDtypeStructs), all devices."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))
