"""Reads XLA:GPU's dump of a compiled program: what it launches, and what each launch costs.

With `--xla_dump_to=DIR --xla_dump_hlo_as_text`, XLA:GPU writes per module
three files that together say what runs on the device:

* `*gpu_after_optimizations.txt`: the optimised HLO (fusions, the products
  inside them, loops with their trip counts);
* `*thunk_sequence_after_thunk_passes.txt` (or `*thunk_sequence.txt` where
  no thunk pass changed anything): the runtime's launch sequence — kernels,
  copies, loops, and the command buffers (CUDA graphs) grouping them;
* `*thunk_metadata.txt`: each thunk's id and its HLO instruction.

`analyse_dump` joins them into one `Kernel` per launch site: how often it
runs per iteration of the program's outer loop, whether it runs inside a
command buffer, the FLOPs of its products and the bytes it reads and
writes. `experiments.benchmarking.kernel_model` prices those launches.
"""

import collections
import dataclasses
import glob
import math
import os
import re
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from gmn_jax.errors import DataError

# Bytes per element of the HLO element types.
ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2,
                 "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8,
                 "u64": 8, "f64": 8, "c64": 8, "c128": 16}

_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_THUNK = re.compile(r"^(\d+): (k\w+)")
_METADATA = re.compile(r'profile_annotation: "([^"]+)"\s*thunk_id: (\d+)')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# Kernel-like thunks: one device launch each.
_LAUNCH_KINDS = ("kCustomKernel", "kKernel", "kCopy", "kGemm", "kCublasLtMatmul",
                 "kCustomCall", "kSort", "kCuDnn", "kTriangularSolve", "kFft",
                 "kMemset32BitValue", "kMemzero")
# Where a fusion parameter is only sliced, the kernel reads the slices.
_SLICING_OPCODES = ("get-tuple-element", "dynamic-slice", "gather", "slice")


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction of the optimised module."""
  name: str
  computation: str
  opcode: str
  type_text: str
  operands: Tuple[str, ...]
  attributes: str
  is_root: bool = False


@dataclasses.dataclass(frozen=True)
class Product:
  """One matrix product (an HLO dot or a cuBLAS call).

  Attributes:
    output_shape: the result's dimensions (batch dimensions first).
    contracted: the product of the contracted dimensions' sizes.
    operand_type: the left operand's element type ("f32", "bf16", ...).
  """
  output_shape: Tuple[int, ...]
  contracted: int
  operand_type: str

  @property
  def flop(self) -> int:
    """2 × output elements × contracted size."""
    return 2 * math.prod(self.output_shape) * self.contracted


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One launch site of the program and what it costs per outer iteration.

  Attributes:
    thunk_id: the thunk's id in the dump.
    name: its HLO instruction (a fusion, copy, custom call, ...).
    kind: the thunk kind ("kCustomKernel", "kCopy", ...).
    runs_per_iteration: launches per outer-loop iteration (loop trip
      counts multiplied, divided by the outer trip count).
    in_command_buffer: launched as part of a command buffer (CUDA graph).
    products: the matrix products it computes.
    bytes: bytes read plus bytes written by one launch.
  """
  thunk_id: int
  name: str
  kind: str
  runs_per_iteration: float
  in_command_buffer: bool
  products: Tuple[Product, ...]
  bytes: int

  @property
  def flop(self) -> int:
    """FLOPs of one launch."""
    return sum(p.flop for p in self.products)


@dataclasses.dataclass(frozen=True)
class Dump:
  """What `analyse_dump` read from one module's dump.

  Attributes:
    directory: where the files are.
    kernels: one entry per launch site.
    outer_trip_count: the trip count of the entry computation's loop
      that iterations are counted in.
    command_buffers_per_iteration: command-buffer launches per iteration.
    unnamed_launches_per_iteration: launches whose thunk names no HLO
      instruction (their `Kernel.name` is ""): counted with latency only.
  """
  directory: str
  kernels: Tuple[Kernel, ...]
  outer_trip_count: int
  command_buffers_per_iteration: float
  unnamed_launches_per_iteration: float = 0.0

  @property
  def launches_per_iteration(self) -> float:
    """Kernel and copy launches per iteration, inside command buffers or not."""
    return sum(k.runs_per_iteration for k in self.kernels)

  @property
  def host_launches_per_iteration(self) -> float:
    """What the host launches per iteration: command buffers + loose kernels."""
    loose = sum(k.runs_per_iteration for k in self.kernels if not k.in_command_buffer)
    return self.command_buffers_per_iteration + loose

  @property
  def flop_per_iteration(self) -> float:
    """Product FLOPs per iteration."""
    return sum(k.runs_per_iteration * k.flop for k in self.kernels)

  @property
  def bytes_per_iteration(self) -> float:
    """Bytes read and written per iteration."""
    return sum(k.runs_per_iteration * k.bytes for k in self.kernels)


def array_shapes(type_text: str) -> List[Tuple[str, Tuple[int, ...]]]:
  """The (element type, dimensions) of every array in an HLO type.

  Args:
    type_text: e.g. "f32[2,3]{1,0}" or "(f32[2]{0}, s32[])".

  Returns:
    One pair per array, tuples flattened; layouts are ignored.
  """
  return [(element, tuple(int(d) for d in dims.split(",") if d))
          for element, dims in _ARRAY.findall(type_text)]


def type_bytes(type_text: str) -> int:
  """Bytes of all arrays in an HLO type (element types unknown here count 4).

  Args:
    type_text: an HLO type.

  Returns:
    The total size in bytes.
  """
  return _arrays_bytes(array_shapes(type_text))


_OPERAND = re.compile(r"%([\w.\-]+(?:#\d+)?)")


def _operand_names(text: str) -> Tuple[str, ...]:
  """The operands inside an instruction's first, top-level parentheses.

  An operand is a name, or "name#i" for element i of a tuple-valued one.
  """
  depth = 0
  for end, char in enumerate(text):
    if char == "(":
      depth += 1
    elif char == ")":
      if depth == 0:
        return tuple(_OPERAND.findall(text[:end]))
      depth -= 1
  return tuple(_OPERAND.findall(text))


def operand_arrays(operand: str, scope: Mapping[str, "Instruction"]
                   ) -> List[Tuple[str, Tuple[int, ...]]]:
  """The (element type, dimensions) of the arrays an operand passes.

  Args:
    operand: an operand as `Instruction.operands` holds it ("x" or "x#i").
    scope: the instructions of the computation it is used in.

  Returns:
    The arrays (all of a tuple-valued operand, one for "x#i"); empty when
    the operand is not in scope.
  """
  name, _, index = operand.partition("#")
  if name not in scope:
    return []
  arrays = array_shapes(scope[name].type_text)
  if not index:
    return arrays
  return [arrays[int(index)]] if int(index) < len(arrays) else []


def _arrays_bytes(arrays: Sequence[Tuple[str, Tuple[int, ...]]]) -> int:
  return sum(ELEMENT_BYTES.get(element, 4) * math.prod(dims) for element, dims in arrays)


def parse_hlo(text: str, source: str = "<text>"
              ) -> Tuple[Dict[str, Dict[str, Instruction]], str]:
  """Parses an optimised HLO module's text.

  Args:
    text: the contents of a `*after_optimizations.txt` dump.
    source: where the text came from, for the error message.

  Returns:
    ({computation: {instruction name: Instruction}}, entry computation).

  Raises:
    DataError: no computation or no ENTRY in the text.
  """
  computations: Dict[str, Dict[str, Instruction]] = {}
  entry, current = None, None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(2)
      computations[current] = {}
      if header.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    found = _INSTRUCTION.match(line) if current else None
    if found:
      root, name, type_text, opcode, rest = found.groups()
      computations[current][name] = Instruction(
          name, current, opcode, type_text, _operand_names(rest), rest, bool(root))
  if not computations or entry is None:
    raise DataError(source, None, "an optimised HLO module with an ENTRY computation",
                    f"{len(computations)} computations and no ENTRY")
  return computations, entry


def _dot_product(instruction: Instruction, scope: Mapping[str, Instruction]) -> Product:
  """The Product of an HLO dot."""
  lhs_type, lhs_dims = operand_arrays(instruction.operands[0], scope)[0]
  contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instruction.attributes)
  indices = [int(i) for i in contracting.group(1).split(",") if i] if contracting else []
  return Product(array_shapes(instruction.type_text)[0][1],
                 math.prod(lhs_dims[i] for i in indices), lhs_type)


def _library_product(instruction: Instruction,
                     scope: Mapping[str, Instruction]) -> Optional[Product]:
  """The Product of a cuBLAS custom call (its dot dimensions are in the config)."""
  contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.attributes)
  lhs = operand_arrays(instruction.operands[0], scope) if instruction.operands else []
  if not contracting or not lhs:
    return None
  lhs_type, lhs_dims = lhs[0]
  indices = [int(i) for i in re.findall(r"\d+", contracting.group(1))]
  return Product(array_shapes(instruction.type_text)[0][1],
                 math.prod(lhs_dims[i] for i in indices), lhs_type)


def products_in(computation: str,
                computations: Mapping[str, Mapping[str, Instruction]]) -> Iterator[Product]:
  """The products a computation runs, nested fusions and calls included.

  Args:
    computation: its name.
    computations: the module (`parse_hlo`).

  Yields:
    One Product per dot or cuBLAS call.
  """
  scope = computations.get(computation, {})
  for instruction in scope.values():
    if instruction.opcode == "dot":
      yield _dot_product(instruction, scope)
    elif instruction.opcode == "custom-call" and "cublas" in instruction.attributes:
      product = _library_product(instruction, scope)
      if product:
        yield product
    elif instruction.opcode in ("fusion", "call"):
      for called in re.findall(r"calls=%([\w.\-]+)", instruction.attributes):
        yield from products_in(called, computations)


def in_place_updates(computation: Mapping[str, Instruction]) -> List[Instruction]:
  """The dynamic-update-slices a fused computation returns (its root or root tuple).

  XLA runs such a fusion in place: it writes the update into the buffer
  it was given, without reading or rewriting the rest.

  Args:
    computation: the fused computation's instructions.

  Returns:
    The returned dynamic-update-slice instructions (empty when the
    fusion's result is anything else).
  """
  roots = [i for i in computation.values() if i.is_root]
  if not roots:
    return []
  returned = ([computation.get(o.partition("#")[0]) for o in roots[0].operands]
              if roots[0].opcode == "tuple" else [roots[0]])
  if not returned or any(i is None or i.opcode != "dynamic-update-slice" for i in returned):
    return []
  return returned


def _through_bitcasts(name: str, computation: Mapping[str, Instruction]) -> str:
  """The instruction a chain of bitcasts starting at `name` reads."""
  while name in computation and computation[name].opcode == "bitcast":
    name = computation[name].operands[0].partition("#")[0]
  return name


def fusion_input_bytes(computation: Mapping[str, Instruction],
                       skip: Sequence[str] = ()) -> int:
  """Bytes a fused computation reads through its parameters.

  A parameter used only through get-tuple-element, slices or gathers
  counts the parts taken (each tuple element once); any other parameter
  counts whole.

  Args:
    computation: the fused computation's instructions.
    skip: parameters not to count (buffers updated in place).

  Returns:
    The bytes read.
  """
  users = collections.defaultdict(list)
  for instruction in computation.values():
    for operand in instruction.operands:
      users[operand.partition("#")[0]].append(instruction)
  total = 0
  for instruction in computation.values():
    if instruction.opcode != "parameter" or instruction.name in skip:
      continue
    taken = users[instruction.name]
    if taken and all(u.opcode in _SLICING_OPCODES for u in taken):
      parts = {}
      for user in taken:
        index = re.search(r"index=(\d+)", user.attributes)
        key = ("element", index.group(1)) if (
            user.opcode == "get-tuple-element" and index) else ("slice", user.name)
        parts[key] = type_bytes(user.type_text)
      total += sum(parts.values())
    else:
      total += type_bytes(instruction.type_text)
  return total


def _launch_cost(instruction: Instruction, computations) -> Tuple[Tuple[Product, ...], int]:
  """(products, bytes read + written) of one launch of an instruction."""
  scope = computations[instruction.computation]
  written = type_bytes(instruction.type_text)
  called = re.search(r"calls=%([\w.\-]+)", instruction.attributes)
  if instruction.opcode == "fusion" and called:
    fused = computations[called.group(1)]
    products = tuple(products_in(called.group(1), computations))
    updates = in_place_updates(fused)
    if updates:
      # Only the updates are written; the buffers they go into are not read
      # (XLA also updates a bitcast of its parameter in place).
      buffers = [_through_bitcasts(u.operands[0].partition("#")[0], fused) for u in updates]
      written = sum(_arrays_bytes(operand_arrays(u.operands[1], fused)) for u in updates)
      return products, written + fusion_input_bytes(
          fused, skip=[b for b in buffers if b in fused and fused[b].opcode == "parameter"])
    return products, written + fusion_input_bytes(fused)
  read = sum(_arrays_bytes(operand_arrays(o, scope)) for o in instruction.operands)
  products = ()
  if instruction.opcode == "custom-call" and "cublas" in instruction.attributes:
    product = _library_product(instruction, scope)
    products = (product,) if product else ()
    # The result is (product, workspace): the workspace is scratch, not traffic.
    written = _arrays_bytes(array_shapes(instruction.type_text)[:1])
  return products, written + read


@dataclasses.dataclass(frozen=True)
class Thunk:
  """One line of a thunk-sequence dump.

  Attributes:
    thunk_id: its id (command buffers all show 0).
    kind: "kCustomKernel", "kWhile", "kCommandBuffer", ...
    loops: the enclosing while thunks, outermost first, as (thunk id,
      "condition" | "body").
    parents: the enclosing thunks that are not loops (command buffers,
      async starts, dynamic-slice wrappers), outermost first, as (thunk id,
      kind).
    is_leaf: no thunk nested inside it.
  """
  thunk_id: int
  kind: str
  loops: Tuple[Tuple[int, str], ...]
  parents: Tuple[Tuple[int, str], ...]
  is_leaf: bool


def parse_thunk_sequence(text: str) -> List[Thunk]:
  """Parses a thunk-sequence dump.

  Nesting is by indentation; the "condition:" / "body:" labels under a
  kWhile say which part of the loop the thunks below them belong to.

  Args:
    text: the contents of `*thunk_sequence*.txt`.

  Returns:
    One Thunk per thunk line, in file order.
  """
  lines = []  # (indent, thunk id, kind, loops, parents)
  open_thunks = []  # [indent, thunk id, kind, loop part or None]
  for line in text.splitlines():
    stripped = line.strip()
    if not stripped:
      continue
    loops_open = [t for t in open_thunks if t[2] == "kWhile"]
    if stripped.startswith(("condition:", "body:")) and loops_open:
      loops_open[-1][3] = stripped.rstrip(":")
      continue
    found = _THUNK.match(stripped)
    if not found:
      continue
    indent = len(line) - len(line.lstrip())
    while open_thunks and open_thunks[-1][0] >= indent:
      open_thunks.pop()
    thunk_id, kind = int(found.group(1)), found.group(2)
    lines.append((indent, thunk_id, kind,
                  tuple((t[1], t[3]) for t in open_thunks if t[2] == "kWhile"),
                  tuple((t[1], t[2]) for t in open_thunks if t[2] != "kWhile")))
    open_thunks.append([indent, thunk_id, kind, "condition" if kind == "kWhile" else None])
  return [Thunk(thunk_id, kind, loops, parents,
                is_leaf=index + 1 == len(lines) or lines[index + 1][0] <= indent)
          for index, (indent, thunk_id, kind, loops, parents) in enumerate(lines)]


def dump_files(directory: str) -> Dict[str, str]:
  """The three files of the main module in an XLA:GPU dump folder.

  A folder may hold several modules (XLA also dumps what it compiles while
  autotuning); the main one is the module with the largest optimised HLO.

  Args:
    directory: an --xla_dump_to folder.

  Returns:
    {"hlo", "thunks", "metadata"}: paths of that module's optimised HLO,
    thunk sequence (after the thunk passes where XLA wrote that) and thunk
    metadata.

  Raises:
    DataError: no optimised HLO, or the module lacks a thunk file.
  """
  modules = glob.glob(os.path.join(directory, "*gpu_after_optimizations.txt"))
  if not modules:
    raise DataError(directory, "*gpu_after_optimizations.txt", "an XLA:GPU dump "
                    "(--xla_dump_to with --xla_dump_hlo_as_text)", "none")
  hlo = max(sorted(modules), key=os.path.getsize)
  prefix = re.match(r"(module_\d+\.[^.]+)\.", os.path.basename(hlo))
  stem = os.path.join(directory, prefix.group(1) if prefix else "*")
  files = {"hlo": hlo}
  for key, names in (("thunks", (".thunk_sequence_after_thunk_passes.txt",
                                 ".thunk_sequence.txt")),
                     ("metadata", (".thunk_metadata.txt",))):
    found = [f for name in names for f in sorted(glob.glob(stem + name))]
    if not found:
      raise DataError(directory, stem + names[-1], f"the {key} file of the module in "
                      f"{os.path.basename(hlo)}", "none")
    files[key] = found[0]
  return files


def analyse_dump(directory: str) -> Dump:
  """Every launch site of a dumped XLA:GPU module and its cost per iteration.

  An iteration is one trip of the entry computation's while loop (the
  outermost loop, e.g. a `lax.scan` over training steps). A launch inside
  nested loop bodies runs (product of their trip counts) / (outer trip
  count) times per iteration; one in a loop condition runs once more than
  the loop's body; one outside every loop runs 1 / (outer trip count)
  times.

  Args:
    directory: the folder with one module's dump (`dump_files`).

  Returns:
    The Dump.

  Raises:
    DataError: missing files, a loop without a known trip count, or no
      loop in the entry computation.
  """
  files = dump_files(directory)
  with open(files["hlo"]) as f:
    computations, entry = parse_hlo(f.read(), files["hlo"])
  with open(files["metadata"]) as f:
    names = {int(i): name for name, i in _METADATA.findall(f.read())}
  with open(files["thunks"]) as f:
    thunks = parse_thunk_sequence(f.read())
  instructions = {i.name: i for scope in computations.values() for i in scope.values()}

  def trip_count(thunk_id):
    instruction = instructions.get(names.get(thunk_id, ""))
    found = _TRIP_COUNT.search(instruction.attributes) if instruction else None
    if not found:
      raise DataError(files["hlo"], names.get(thunk_id), "a while loop with a known trip count",
                      f"none (thunk {thunk_id})")
    return int(found.group(1))

  outer = [t for t in thunks if t.kind == "kWhile" and not t.loops
           and names.get(t.thunk_id) in computations[entry]]
  if not outer:
    raise DataError(files["hlo"], entry, "a while loop in the entry computation (the loop "
                    "that iterations are counted in)", "none")
  trips = {t.thunk_id: trip_count(t.thunk_id) for t in thunks if t.kind == "kWhile"}
  outer_trips = trips[outer[0].thunk_id]

  def runs(loops):
    count = 1
    for loop_id, part in loops:
      count *= trips[loop_id] + (1 if part == "condition" else 0)
    return count / outer_trips

  kernels, command_buffers, unnamed = [], 0.0, 0.0
  for thunk in thunks:
    if thunk.kind == "kCommandBuffer":
      command_buffers += runs(thunk.loops)
      continue
    if thunk.kind not in _LAUNCH_KINDS or not thunk.is_leaf:
      continue
    # A thunk embedded in a wrapper (a dynamic-slice fusion's copy) has no
    # metadata of its own: it does the wrapper's instruction.
    name = next((names[i] for i in [thunk.thunk_id] + [p for p, _ in thunk.parents[::-1]]
                 if i in names and names[i] in instructions), None)
    in_buffer = any(kind == "kCommandBuffer" for _, kind in thunk.parents)
    if name is None:
      unnamed += runs(thunk.loops)
      kernels.append(Kernel(thunk.thunk_id, "", thunk.kind, runs(thunk.loops), in_buffer, (), 0))
      continue
    products, size = _launch_cost(instructions[name], computations)
    kernels.append(Kernel(thunk.thunk_id, name, thunk.kind, runs(thunk.loops), in_buffer,
                          products, size))
  return Dump(directory, tuple(kernels), outer_trips, command_buffers, unnamed)
