"""Hand-written LLVM IR that fastla's kernels call (ARCHITECTURE.md, "Numba discipline").

Each intrinsic is paired with a plain-Python twin through :func:`fastla._jit.intrinsic`: with the
JIT off (or Numba absent) the twin runs instead, and the tests check the two agree. Here: the
same-width bit casts of the exp kernels, the read-only views every kernel receives its inputs as,
the vector-width request of the vectorised loops, the compare masks of the top-k merge, and
:func:`llvm_function` for the intrinsics of other modules (the GEMM micro-kernel's FMA, the lane
solver's selects).
"""

from __future__ import annotations

import struct

import numpy as np

from fastla._host import vector_bytes
from fastla._jit import Entry, intrinsic, nb_types


def llvm_function(builder, name, return_type, arg_types):
    """Declare (or find) the LLVM function ``name`` in the module ``builder`` emits into (for an
    intrinsic's ``llvm.fma`` / ``llvm.fabs`` calls)."""
    from llvmlite import ir
    from numba.core import cgutils

    fnty = ir.FunctionType(return_type, list(arg_types))
    return cgutils.get_or_insert_function(builder.module, fnty, name)


def entry_alloca(builder, ty):
    """A stack slot of LLVM type ``ty`` in the function's entry block (LLVM promotes a slot that is
    only loaded and stored to registers, so a value carried around a loop can live in one)."""
    from numba.core import cgutils

    return cgutils.alloca_once(builder, ty)


def counted_loop(builder, count):
    """``with counted_loop(builder, n) as loop:`` emits a loop of ``n`` (an ``i64`` value) iterations;
    ``loop.index`` is the iteration's ``i64`` index."""
    from numba.core import cgutils

    return cgutils.for_range(builder, count)


def prefetch_line(builder, ptr):
    """Emit a prefetch (read, high locality) of the cache line at ``ptr`` (any pointer)."""
    from llvmlite import ir

    i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()
    fn = llvm_function(builder, "llvm.prefetch.p0", ir.VoidType(), [i8p, i32, i32, i32])
    args = [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
    builder.call(fn, args)


def transpose_vectors(builder, rows):
    """The transpose of ``rows`` (v vectors of v lanes, v a power of two): ``log2(v)`` stages of
    shuffles, each swapping the off-diagonal b x b blocks of every 2b x 2b block."""
    from llvmlite import ir

    v, rows, b = len(rows), list(rows), 1
    i32 = ir.IntType(32)
    while b < v:  # swap the off-diagonal blocks of size b
        lo = ir.Constant(ir.VectorType(i32, v), [j if not j & b else v + j - b for j in range(v)])
        hi = ir.Constant(ir.VectorType(i32, v), [j + b if not j & b else v + j for j in range(v)])
        for p in range(v):
            if not p & b:
                q = p + b
                rows[p], rows[q] = (
                    builder.shuffle_vector(rows[p], rows[q], lo),
                    builder.shuffle_vector(rows[p], rows[q], hi),
                )
        b *= 2
    return rows


def masked_load(builder, ptr, count, align, passthru=None):
    """Load the first ``count`` elements of the vector at ``ptr`` (a pointer to an LLVM vector
    type) through ``llvm.masked.load``, never touching memory past them; the other lanes are
    ``passthru`` (undefined when None)."""
    vty, suffix, i32, mask = _masked_access(ptr, count)
    fn = llvm_function(builder, f"llvm.masked.load.{suffix}", vty, [vty.as_pointer(), i32, mask.type, vty])
    fill = vty(None) if passthru is None else passthru
    return builder.call(fn, [ptr, i32(align), mask, fill])


def masked_store(builder, value, ptr, count, align):
    """Store the first ``count`` elements of the vector ``value`` at ``ptr`` (a pointer to its type)
    through ``llvm.masked.store``, never touching memory past them."""
    from llvmlite import ir

    vty, suffix, i32, mask = _masked_access(ptr, count)
    fn = llvm_function(
        builder, f"llvm.masked.store.{suffix}", ir.VoidType(), [vty, vty.as_pointer(), i32, mask.type]
    )
    builder.call(fn, [value, ptr, i32(align), mask])


def _masked_access(ptr, count):
    """What :func:`masked_load` and :func:`masked_store` share: the vector type at ``ptr``, the
    intrinsics' type suffix, the ``i32`` type of the alignment and the mask of the first ``count``
    lanes."""
    from llvmlite import ir

    vty = ptr.type.pointee
    bits = 8 * (4 if vty.element == ir.FloatType() else 8)
    mask = ir.Constant(ir.VectorType(ir.IntType(1), vty.count), [1] * count + [0] * (vty.count - count))
    return vty, f"v{vty.count}f{bits}.p0", ir.IntType(32), mask


def array_parts(context, builder, ty, val):
    """The data pointer (as ``i8*``, for byte offsets), shape and strides (in bytes) of the array
    ``val`` of Numba type ``ty``, as lists of LLVM values (for an intrinsic's code generation)."""
    from llvmlite import ir
    from numba.core import cgutils

    arr = context.make_array(ty)(context, builder, val)
    shape = cgutils.unpack_tuple(builder, arr.shape, ty.ndim)
    strides = cgutils.unpack_tuple(builder, arr.strides, ty.ndim)
    return builder.bitcast(arr.data, ir.IntType(8).as_pointer()), shape, strides


# --------------------------------------------------------------------------- calls through an address


def _call_entry_twin(address, fn, args):
    _linked(fn)(args)


def _linked(fn):
    """``fn(*args)`` as a function of ``args`` alone: what :func:`call_entry` runs with the JIT off,
    and compiles with ``compile_internal`` where the call cannot go through the entry. The
    dispatcher is a constant of the closure: passed as an argument, its value would be lowered to
    the address of the Python object (a "dynamic global"), and Numba caches no function holding one."""

    def call(args):
        fn(*args)

    return call


def _linked_tasks(fn, claimed=False):
    """:func:`parallel_tasks`'s serial loop of ``fn`` (its JIT-off form and its linked fallback), as
    :func:`_linked` is ``fn``'s call; :func:`claimed_tasks`'s (row 0 runs every task) when
    ``claimed``."""

    def tasks_of(args, tasks):
        for task in range(tasks):
            fn(*args, task)

    def claimed_of(args, tasks):
        for task in range(tasks):
            fn(*args, task, 0)

    return claimed_of if claimed else tasks_of


def _entry_takes(address, fn, args):
    """Whether a call may go through ``address``: an integer, and ``args`` exactly the types that
    the :class:`fastla._jit.Entry` of ``fn`` compiles."""
    return isinstance(address, nb_types.Integer) and Entry.takes(fn, args)


@intrinsic(_call_entry_twin)
def call_entry(typingctx, address, fn, args):
    """``fn(*args)``. In compiled code, through ``address`` (from :meth:`fastla._jit.Entry.address`)
    when it is an integer and ``args`` has exactly the types the entry compiles (Numba's calling
    convention; the status it returns is ignored); with ``address`` None, or other types, a plain
    (linked) call.

    An intrinsic, not an overload: an overload's implementation is a function of its own that
    Numba compiles for each call's types (~0.07 s of an op's cold first call each)."""
    sig = nb_types.none(address, fn, args)
    through = _entry_takes(address, fn, args)

    def codegen(context, builder, sig, llargs):
        from numba.core import cgutils

        if not through:
            call = _linked(sig.args[1].dispatcher)
            return context.compile_internal(builder, call, nb_types.none(sig.args[2]), llargs[2:])
        argtys = list(sig.args[2].types)
        values = cgutils.unpack_tuple(builder, llargs[2], len(argtys))
        fnty = context.call_conv.get_function_type(nb_types.none, argtys)
        callee = builder.inttoptr(llargs[0], fnty.as_pointer())
        context.call_conv.call_function(builder, callee, nb_types.none, argtys, values)
        return context.get_dummy_value()

    return sig, codegen


def _parallel_tasks_twin(address, fn, args, tasks, threads, contiguous=False):
    _linked_tasks(fn)(args, tasks)


@intrinsic(_parallel_tasks_twin)
def parallel_tasks(typingctx, address, fn, args, tasks, threads, contiguous=None):
    """``fn(*args, task)`` for ``task`` in ``range(tasks)``, on ``threads`` threads. In compiled
    code, through ``address`` (from :meth:`fastla._jit.Entry.address`, for the types of ``args``
    plus an int64 ``task``), on Numba's running threading layer; with ``address`` None, or other
    types, a plain serial loop of linked calls.

    A parallel loop without a ``prange``: Numba compiles a ``prange`` loop into three libraries of
    its own (the loop body, its gufunc wrapper, the launcher; a trivial one takes 0.6-0.7 s to
    compile on a 2-core Zen 5, most of an op's cold-call budget), where this emits two small
    functions into the caller: a trampoline that runs one thread's tasks and the call of the
    layer's ``numba_parallel_for`` (the entry point Numba's own parallel loops call). Thread ``i``
    of ``n = min(threads, tasks)`` runs tasks ``i, i + n, i + 2n, ...`` (interleaved, so that
    uneven tasks such as causal attention's query blocks balance), or with ``contiguous`` the
    ``i``-th run of ``ceil(tasks / n)`` consecutive tasks (tasks that stream consecutive memory:
    the packed top-k's corpus panels ran 7% slower interleaved); ``threads`` must not exceed
    :func:`fastla._jit.max_threads` (per-thread scratch is sized by it; callers pass
    :func:`fastla._jit.threads_here`). ``fn`` must not raise (its status is ignored) and the caller
    must have started the threading layer (:func:`fastla._jit.ensure_threads`: the compiled code
    refers to the layer's symbol). An intrinsic, as :func:`call_entry` is: an overload cost each
    call's types a function of its own to compile. (:func:`claimed_tasks`: the same, with tasks
    claimed in order by whichever thread is free.)"""
    # an omitted ``contiguous`` is typed none (Numba lowers the default into the signature's slot)
    contiguous = nb_types.none if contiguous is None else contiguous
    sig = nb_types.none(address, fn, args, tasks, threads, contiguous)
    return sig, _tasks_codegen(sig, claimed=False)


def _claimed_tasks_twin(address, fn, args, tasks, threads):
    _linked_tasks(fn, claimed=True)(args, tasks)


@intrinsic(_claimed_tasks_twin)
def claimed_tasks(typingctx, address, fn, args, tasks, threads):
    """``fn(*args, task, row)`` for ``task`` in ``range(tasks)``, on ``threads`` threads, as
    :func:`parallel_tasks` runs them (``address`` compiled for ``args`` plus two int64s), but with
    no task bound to a thread: each of ``n = min(threads, tasks)`` rows takes the next unclaimed
    task from a counter they share (an atomic add) until none is left, and passes its own ``row``
    (``0 <= row < n``; one thread runs a row at a time, so per-row scratch needs no lock).

    The threading layer runs rows, not threads: where a worker joins the parallel region late, the
    thread that launched it runs its own row and then the late one's, serially. Numba's TBB layer (a
    fresh task arena per region) did so often on an AMD EPYC guest (znver2, 2 cores): two rows of
    1 ms each took 1.98-2.03 ms over nine calls back to back, two of 3 ms each 6.3 ms after 0.15 s
    idle, and a 2000 x 256 x 256 float64 GEMM on two threads ran at one thread's speed after any
    idle time (7.4 ms against 3.7 back to back, 7.2 on one thread). Claimed, a late row takes what
    is left when it starts."""
    sig = nb_types.none(address, fn, args, tasks, threads)
    return sig, _tasks_codegen(sig, claimed=True)


def _tasks_codegen(sig, claimed):
    """The lowering of :func:`parallel_tasks` (``claimed`` False) and :func:`claimed_tasks`."""
    address, fn, args = sig.args[:3]
    extra = (nb_types.int64, nb_types.int64) if claimed else (nb_types.int64,)
    through = isinstance(args, nb_types.BaseTuple) and _entry_takes(
        address, fn, nb_types.Tuple((*args.types, *extra))
    )

    def codegen(context, builder, sig, llargs):
        if not through:
            serial = _linked_tasks(sig.args[1].dispatcher, claimed)
            return context.compile_internal(builder, serial, nb_types.none(*sig.args[2:4]), llargs[2:4])
        from llvmlite import ir
        from numba.core import cgutils

        at_v, _, args_v, tasks_v, threads_v = llargs[:5]
        i64, i8p = ir.IntType(64), ir.IntType(8).as_pointer()
        tasks_v = context.cast(builder, tasks_v, sig.args[3], nb_types.int64)
        threads_v = context.cast(builder, threads_v, sig.args[4], nb_types.int64)
        at_v = context.cast(builder, at_v, sig.args[0], nb_types.int64)
        contiguous_v = ir.Constant(ir.IntType(1), 0)
        if not claimed and sig.args[5] != nb_types.none:
            contiguous_v = context.cast(builder, llargs[5], sig.args[5], nb_types.boolean)
        one = ir.Constant(i64, 1)
        n = builder.select(builder.icmp_signed("<", threads_v, tasks_v), threads_v, tasks_v)
        n = builder.select(builder.icmp_signed("<", n, one), one, n)
        # thread r runs tasks r * first + j * step (j = 0, 1, ...) below min(tasks, r * first +
        # span): interleaved (first 1, step n, span tasks) or in runs (first per, step 1, span
        # per, with per = ceil(tasks / n))
        per = builder.sdiv(builder.sub(builder.add(tasks_v, n), one), n)
        first = builder.select(contiguous_v, per, one)
        step = builder.select(contiguous_v, one, n)
        span = builder.select(contiguous_v, per, tasks_v)
        # what every thread reads: the task count, first, step, span, the entry point, the arguments,
        # and the claimed tasks' counter (the next task to take)
        data_ty = ir.LiteralStructType([i64, i64, i64, i64, i64, args_v.type, i64])
        data = cgutils.alloca_once(builder, data_ty)
        for i, v in enumerate((tasks_v, first, step, span, at_v, args_v, ir.Constant(i64, 0))):
            builder.store(v, cgutils.gep_inbounds(builder, data, 0, i))
        tramp = _task_trampoline(context, builder.module, data_ty, list(sig.args[2].types), claimed)
        # one "row" per thread, the row's address its index: base + r (steps = 1 byte), never read
        base = builder.bitcast(data, i8p)
        arg_slot = cgutils.alloca_once(builder, i8p)
        builder.store(base, arg_slot)
        dims = cgutils.alloca_once(builder, i64)
        builder.store(n, dims)
        steps = cgutils.alloca_once(builder, i64)
        builder.store(one, steps)
        data_p = builder.bitcast(data, i8p)
        with builder.if_else(builder.icmp_signed(">", n, one)) as (parallel, serial):
            with parallel:
                fnty = ir.FunctionType(ir.VoidType(), [i8p] * 5 + [i64] * 3)
                launch = cgutils.get_or_insert_function(builder.module, fnty, "numba_parallel_for")
                ptrs = [builder.bitcast(x, i8p) for x in (tramp, arg_slot, dims, steps)]
                builder.call(launch, [*ptrs, data_p, ir.Constant(i64, 0), one, n])
            with serial:
                builder.call(tramp, [arg_slot, dims, steps, data_p])
        return context.get_dummy_value()

    return codegen


def _task_trampoline(context, module, data_ty, argtys, claimed=False):
    """The per-thread function of :func:`parallel_tasks` (the layer's gufunc signature
    ``void(char **args, intp *dims, intp *steps, void *data)``): rows ``r .. r + dims[0] - 1``
    (``r`` the row address's offset from the data), each row a thread index ``i`` running tasks
    ``i * first + j * step < min(tasks, i * first + span)`` of the entry point in ``data``; or,
    ``claimed`` (:func:`claimed_tasks`), each row taking the counter's next task until none is left
    and passing the task and its row index."""
    from llvmlite import ir
    from numba.core import cgutils

    i64, i8p = ir.IntType(64), ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p.as_pointer(), i64.as_pointer(), i64.as_pointer(), i8p])
    fn = ir.Function(module, fnty, name=module.get_unique_name("fastla.tasks"))
    fn.linkage = "internal"
    rows_p, dims_p, _, data_raw = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    data = b.bitcast(data_raw, data_ty.as_pointer())
    tasks, first, step, span, at = (b.load(cgutils.gep_inbounds(b, data, 0, i)) for i in range(5))
    values = b.load(cgutils.gep_inbounds(b, data, 0, 5))
    counter = cgutils.gep_inbounds(b, data, 0, 6)
    row0 = b.sub(b.ptrtoint(b.load(rows_p), i64), b.ptrtoint(data_raw, i64))
    argtys = [*argtys, nb_types.int64] + ([nb_types.int64] if claimed else [])
    callee = b.inttoptr(at, context.call_conv.get_function_type(nb_types.none, argtys).as_pointer())
    parts = [b.extract_value(values, i) for i in range(len(argtys) - (2 if claimed else 1))]
    with cgutils.for_range(b, b.load(dims_p)) as row:
        index = b.add(row0, row.index)
        task_slot = cgutils.alloca_once(b, i64)
        if not claimed:
            start = b.mul(index, first)
            end = b.add(start, span)
            end = b.select(b.icmp_signed("<", tasks, end), tasks, end)
            b.store(start, task_slot)
        cond = b.append_basic_block("tasks.cond")
        body = b.append_basic_block("tasks.body")
        done = b.append_basic_block("tasks.done")
        b.branch(cond)
        b.position_at_end(cond)
        if claimed:
            task = b.atomic_rmw("add", counter, ir.Constant(i64, 1), "monotonic")
            b.cbranch(b.icmp_signed("<", task, tasks), body, done)
        else:
            task = b.load(task_slot)
            b.cbranch(b.icmp_signed("<", task, end), body, done)
        b.position_at_end(body)
        call_args = [*parts, task, index][: len(argtys)]  # (the row index for a claimed task)
        context.call_conv.call_function(b, callee, nb_types.none, argtys, call_args)
        if not claimed:
            b.store(b.add(task, step), task_slot)
        b.branch(cond)
        b.position_at_end(done)
    b.ret_void()
    return fn


# --------------------------------------------------------------------------- calls through a symbol


def _call_out_of_line_twin(fn, args):
    """``fn(*args)``."""
    return fn(*args)


_SYMBOLS: dict = {}  # symbol name -> entry point registered with LLVM


def out_of_line_symbol(module, name, argtypes):
    """Compile (or load from fastla's cache) ``module.name`` (a ``@jit`` dispatcher) for the Numba
    types ``argtypes``, register its entry point with LLVM's JIT under a name stable across
    processes, and return ``(symbol, compiled signature)``."""
    import hashlib
    import importlib

    import llvmlite.binding as ll

    from fastla import _jit

    disp = getattr(importlib.import_module(module), name)
    argtypes = tuple(argtypes)
    _jit.ensure_threads()  # a kernel using thread ids cannot be loaded before the layer starts
    cres = disp.overloads.get(argtypes)
    if cres is None:
        disp.compile(argtypes)
        cres = disp.overloads[argtypes]
    key = f"{module}.{name}{argtypes!r}->{cres.signature.return_type!r}"
    symbol = "fastla.out_of_line." + hashlib.sha256(key.encode()).hexdigest()[:32]
    if symbol not in _SYMBOLS:
        address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        ll.add_symbol(symbol, address)
        _SYMBOLS[symbol] = address
    return symbol, cres.signature


def _reregister(module, name, argtypes, symbol):
    """A cached caller's ``reload_init`` hook: register ``symbol`` before its code loads. Raises
    ImportError where this fastla compiles ``module.name`` to another signature than the caller was
    compiled against (its code would call a symbol no longer defined)."""
    found, _ = out_of_line_symbol(module, name, argtypes)
    if found != symbol:
        raise ImportError(
            f"a cached Numba function calls fastla's {module}.{name} as compiled by another fastla "
            "version: delete that function's Numba cache (its __pycache__ *.nbi / *.nbc files)"
        )


def _dispatcher_path(fn_type):
    """``(module, attribute)`` under which the dispatcher of ``fn_type`` is importable."""
    import importlib

    disp = fn_type.dispatcher
    py = disp.py_func
    module = importlib.import_module(py.__module__)
    for attr in (py.__name__, *vars(module)):
        if getattr(module, attr, None) is disp:
            return py.__module__, attr
    raise TypeError(f"call_out_of_line: {py.__qualname__} is not a module-level @jit function")


@intrinsic(_call_out_of_line_twin)
def call_out_of_line(typingctx, fn, args):
    """``fn(*args)`` for a ``@jit`` function ``fn``. In compiled code: a call of ``fn``'s own
    compiled code (in its own cached library) through a symbol, where a plain call would link a
    copy of ``fn`` into the caller, to be optimised and code-generated again in every caller.

    For ``fastla.kernels``, whose big pieces (the packed GEMM, the blocked LU, cosine, attention)
    a user's ``@njit`` function would otherwise compile again each time (1.3-1.8 s a user function).
    The symbol (:func:`out_of_line_symbol`) is registered with LLVM's JIT when the caller compiles;
    a caller loaded from Numba's cache in a later process registers it again before its code is
    loaded (Numba runs a compiled function's ``reload_init`` hooks first). Exceptions ``fn``
    raises propagate to the caller as from a plain call."""
    if not isinstance(fn, nb_types.Dispatcher) or not isinstance(args, nb_types.BaseTuple):
        return None
    argtypes = tuple(args.types)
    template = typingctx.resolve_function_type(fn, argtypes, {})
    if template is None:
        return None
    sig = template.return_type(fn, args)

    def codegen(context, builder, sig, llargs):
        import functools

        from numba.core import cgutils

        module, name = _dispatcher_path(sig.args[0])
        symbol, target = out_of_line_symbol(module, name, template.args)
        library = context.active_code_library
        library._reload_init.add(functools.partial(_reregister, module, name, template.args, symbol))
        values = cgutils.unpack_tuple(builder, llargs[1], len(argtypes))
        pairs = zip(values, argtypes, target.args, strict=True)
        values = [context.cast(builder, v, t, u) for v, t, u in pairs]
        fnty = context.call_conv.get_function_type(target.return_type, list(target.args))
        callee = cgutils.get_or_insert_function(builder.module, fnty, symbol)
        status, result = context.call_conv.call_function(
            builder, callee, target.return_type, list(target.args), values
        )
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.cast(builder, result, target.return_type, sig.return_type)

    return sig, codegen


# --------------------------------------------------------------------------- bit casts


def _i64_as_f64_twin(i):
    return struct.unpack("<d", struct.pack("<q", int(i)))[0]


def _i32_as_f32_twin(i):

    return np.float32(struct.unpack("<f", struct.pack("<i", int(i)))[0])


def _f64_as_i64_twin(x):
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _f32_as_i32_twin(x):
    return struct.unpack("<i", struct.pack("<f", float(x)))[0]


def _bitcast_typer(src_kind, bits):
    """Typer of a same-width bit cast: ``src_kind`` "int" (int -> float) or "float" (float -> int)."""

    def typer(typingctx, x):
        ity = nb_types.int64 if bits == 64 else nb_types.int32
        fty = nb_types.float64 if bits == 64 else nb_types.float32
        src, dst = (ity, fty) if src_kind == "int" else (fty, ity)
        if not isinstance(x, nb_types.Integer if src_kind == "int" else nb_types.Float):
            return None

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[0], sig.args[0], src)
            return builder.bitcast(v, context.get_value_type(dst))

        return dst(x), codegen

    return typer


@intrinsic(_i64_as_f64_twin)
def i64_as_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (used to build 2**n in exp)."""
    return _bitcast_typer("int", 64)(typingctx, x)


@intrinsic(_i32_as_f32_twin)
def i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32."""
    return _bitcast_typer("int", 32)(typingctx, x)


@intrinsic(_f64_as_i64_twin)
def f64_as_i64(typingctx, x):
    """Reinterpret the bits of a float64 as an int64."""
    return _bitcast_typer("float", 64)(typingctx, x)


@intrinsic(_f32_as_i32_twin)
def f32_as_i32(typingctx, x):
    """Reinterpret the bits of a float32 as an int32."""
    return _bitcast_typer("float", 32)(typingctx, x)


def _ldexp_twin(x, n):
    with np.errstate(all="ignore"):  # overflow to inf and underflow to 0 are results, as compiled
        return np.ldexp(x, int(n))  # x's own precision (np.float32 stays float32), one rounding


@intrinsic(_ldexp_twin)
def ldexp(typingctx, x, n):
    """``x * 2**n`` for a float32 or float64 ``x`` and an integer ``n`` (as int32), rounded once:
    LLVM's ``llvm.ldexp``, which the loop vectoriser widens. On an AVX-512 target it is one
    ``vscalefps``/``vscalefpd`` per vector; without AVX-512 LLVM has no vector instruction for it
    and calls libm's ``ldexp`` per element, so kernels use it only where the target has AVX-512F
    (:data:`fastla._math.SCALEF`)."""
    if not isinstance(x, nb_types.Float) or not isinstance(n, nb_types.Integer):
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir

        fty = context.get_value_type(sig.return_type)
        k = context.cast(builder, args[1], sig.args[1], nb_types.int32)
        name = f"llvm.ldexp.f{x.bitwidth}.i32"
        return builder.call(llvm_function(builder, name, fty, (fty, ir.IntType(32))), [args[0], k])

    return x(x, n), codegen


def _clamp_twin(x, lo, hi):
    xc = x if x > lo else lo  # NaN compares false: lo, as compiled (the caller restores NaN)
    return xc if xc < hi else hi


@intrinsic(_clamp_twin)
def clamp(typingctx, x, lo, hi):
    """``min(max(x, lo), hi)`` for floats of one type, ``lo <= hi``, where a NaN ``x`` gives an
    unspecified value: for a caller that restores NaN itself (``exp``'s ``x if x == x``). LLVM's
    ``maxnum``/``minnum`` with the ``nnan`` flag: one ``vmaxps``/``vminps`` each per vector. The same
    clamp as two compare-and-selects keeps NaN's result defined, and LLVM merged the pair into two
    masked compares and two blends (their masks spilled): measured on Zen 4, a float32 row of 4096
    (exp, store, sum; L1-resident) 0.29 -> 0.23 ns an element. The twin gives ``lo`` for NaN."""
    if not (isinstance(x, nb_types.Float) and lo == x and hi == x):
        return None

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(sig.return_type)
        mx = llvm_function(builder, f"llvm.maxnum.f{x.bitwidth}", fty, (fty, fty))
        mn = llvm_function(builder, f"llvm.minnum.f{x.bitwidth}", fty, (fty, fty))
        v = builder.call(mx, [args[0], args[1]], fastmath=("nnan",))
        return builder.call(mn, [v, args[2]], fastmath=("nnan",))

    return x(x, lo, hi), codegen


def _widen_twin(x):
    return np.float32(x.view(np.float16)) if isinstance(x, np.uint16) else x


@intrinsic(_widen_twin)
def widen(typingctx, x):
    """An element of a kernel operand as the float it computes in: a float unchanged, a ``uint16``
    (the bits of a float16: NumPy's float16 has no Numba type, so a float16 array enters a kernel
    as its ``uint16`` view) as float32, exactly. LLVM vectorises the conversion (``vcvtph2ps``
    where the host has F16C), so a float16 operand is read at half a float32 one's traffic."""
    from llvmlite import ir

    if isinstance(x, nb_types.Float):
        return x(x), lambda context, builder, sig, args: args[0]
    if x != nb_types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return nb_types.float32(x), codegen


# --------------------------------------------------------------------------- bit masks

#: scores :func:`above_mask` compares at once: the bits of its mask
MASK_LANES = 64


def _above_mask_twin(a, start, thr):
    above = np.flatnonzero(a[int(start) : int(start) + MASK_LANES] > thr)
    return np.uint64(sum(1 << int(t) for t in above))


@intrinsic(_above_mask_twin)
def above_mask(typingctx, a, start, thr):
    """The ``MASK_LANES`` elements ``a[start : start + MASK_LANES]`` of a 1-D float array that
    exceed ``thr`` (NaN does not), as the bits of a ``uint64`` (bit ``t`` for ``a[start + t]``): one
    vector load and compare (``vcmpps`` into a mask register on AVX-512, ``vmovmskps`` on AVX2), no
    bounds check (the caller's range is whole). Read a bit at a time with :func:`lowest_bit`."""
    if not (isinstance(a, nb_types.Array) and a.ndim == 1 and a.layout == "C"):
        return None
    if not (
        isinstance(a.dtype, nb_types.Float)
        and isinstance(start, nb_types.Integer)
        and isinstance(thr, nb_types.Float)
    ):
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir

        data, _, (stride,) = array_parts(context, builder, sig.args[0], args[0])
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fty = context.get_value_type(a.dtype)
        vty = ir.VectorType(fty, MASK_LANES)
        first = builder.mul(context.cast(builder, args[1], sig.args[1], nb_types.int64), stride)
        ptr = builder.bitcast(builder.gep(data, [first]), vty.as_pointer())
        values = builder.load(ptr, align=a.dtype.bitwidth // 8)
        limit = context.cast(builder, args[2], sig.args[2], a.dtype)
        one = builder.insert_element(vty(ir.Undefined), limit, i32(0))
        splat = builder.shuffle_vector(
            one, vty(ir.Undefined), ir.VectorType(i32, MASK_LANES)([0] * MASK_LANES)
        )
        return builder.bitcast(builder.fcmp_ordered(">", values, splat), i64)

    return nb_types.uint64(a, start, thr), codegen


def _lowest_bit_twin(x):
    x = int(x)
    return (x & -x).bit_length() - 1


@intrinsic(_lowest_bit_twin)
def lowest_bit(typingctx, x):
    """The position of the lowest set bit of a nonzero ``uint64`` (``tzcnt``; undefined for 0)."""
    if x != nb_types.uint64:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir

        i1, i64 = ir.IntType(1), ir.IntType(64)
        fn = llvm_function(builder, "llvm.cttz.i64", i64, (i64, i1))
        return builder.call(fn, [args[0], i1(1)])

    return nb_types.int64(x), codegen


# --------------------------------------------------------------------------- allocation


def _empty_twin(shape, dtype):
    return np.empty(shape, dtype)


@intrinsic(_empty_twin)
def empty(typingctx, shape, dtype):
    """``np.empty(shape, dtype)`` (C order) in compiled code: the same allocation, shape checks and
    errors (Numba's own lowering of an empty array), without compiling ``np.empty``'s implementation,
    a function of its own that Numba compiles once per process for each shape and dtype type
    (0.07-0.1 s of an op's cold first call each, measured on Zen 4)."""
    from numba.core.typing.npydecl import parse_dtype, parse_shape

    nb_dtype, ndim = parse_dtype(dtype), parse_shape(shape)
    if nb_dtype is None or ndim is None:
        return None
    sig = nb_types.Array(nb_dtype, ndim, "C")(shape, dtype)

    def codegen(context, builder, sig, args):
        from numba.core.imputils import impl_ret_new_ref
        from numba.np.arrayobj import _empty_nd_impl, _parse_empty_args

        arrtype, shapes = _parse_empty_args(context, builder, sig, args)
        ary = _empty_nd_impl(context, builder, arrtype, shapes)
        return impl_ret_new_ref(context, builder, sig.return_type, ary._getvalue())

    return sig, codegen


# --------------------------------------------------------------------------- read-only views
#
# Numba compiles a kernel once per argument *type*, and an array's type includes its layout (C, F,
# any) and whether it is writeable. Inputs that arrive read-only, transposed or strided would each
# compile the kernel again (5 s for the GEMM driver): the test suite once compiled it 26 times.
# Kernels therefore receive their *inputs* as read-only views (``readonly``; in compiled code
# ``as_readonly``), and the GEMM reads its operands through one strided-view type whatever their
# layout (``_gemm_kernels.Operand``). A read-only type also lets Numba refuse a write to an input.


def readonly(x):
    """A read-only view of ``x`` (no copy): the one array type a kernel compiles for its inputs.
    (``setflags``: 0.26 us a view, setting ``flags.writeable`` 0.41.)"""
    v = x.view()
    v.setflags(write=False)
    return v


def kernel_input(x):
    """``x`` as a kernel input: C-contiguous (copied only if it is not) and read-only typed; an
    input that is both already is passed as it is (0.11 us against 0.44 for a view)."""
    flags = x.flags
    if flags.c_contiguous:
        return readonly(x) if flags.writeable else x
    return readonly(np.ascontiguousarray(x))


def _as_readonly_twin(x):
    return readonly(x)


@intrinsic(_as_readonly_twin)
def as_readonly(typingctx, x):
    """``x`` typed read-only in compiled code (the same array, no copy), as :func:`readonly`."""
    if not isinstance(x, nb_types.Array):
        return None

    def codegen(context, builder, sig, args):
        from numba.core.imputils import impl_ret_borrowed

        return impl_ret_borrowed(context, builder, sig.return_type, args[0])

    return x.copy(readonly=True)(x), codegen


# --------------------------------------------------------------------------- borrowed views
#
# An array passed to a function that is not inlined costs reference-count updates on its owner: the
# caller takes a reference for the call and drops it after (atomic read-modify-writes on the owner's
# count). From a user's loop over rows (``kernels.softmax(X[i], Y[i])``) that is two fresh views a
# call, and measured on an Intel Xeon (rocketlake) it is most of the call: a function looping over
# one float64 cost 46-58 ns a call with the views passed as they are, 9 ns with them borrowed (below);
# rows of 3 / 10: 48 -> 13 ns, 54 -> 18 ns. The cost does not show while LLVM inlines the callee
# (it then drops the paired updates): it appears once the callee's loops are long enough to stay a
# call.


def _borrow_twin(x):
    return x


@intrinsic(_borrow_twin)
def borrow(typingctx, x):
    """``x`` (the same data, shape and strides) without its reference to the memory's owner, so
    that passing it to a call costs no reference counting. Only for arguments of a call that
    returns before ``x`` can go away: never return or store the borrowed array."""
    if not isinstance(x, nb_types.Array):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        out = context.make_array(sig.return_type)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(out, field, getattr(src, field))
        return out._getvalue()  # meminfo and parent stay null: nothing to count

    return x(x), codegen


# --------------------------------------------------------------------------- vector width
#
# LLVM's loop vectoriser picks its width from the target's *preferred* vector width, not the widest
# one: the Intel AVX-512 cores (skylake-avx512, icelake, rocketlake, sapphirerapids) carry a
# "prefer 256-bit" tuning, so auto-vectorised loops come out as ymm there, while AMD Zen 4 uses zmm.
# Measured on an Intel Xeon (llvm cpu rocketlake, 2 cores), a loop of fastla's exp in cache:
# float32 1.10 ns/element with ymm, 0.50 with zmm; float64 3.24 vs 1.34 ns; softmax 4096^2 float32
# with out= 15.4 ms vs 11.2 ms. Whole ops (2 threads, medians of 7, two interleaved runs each,
# 256-bit -> 512-bit): softmax 4096^2 float32 20.5/22.6 -> 19.3/18.2 ms, log_softmax 37.1/32.8 ->
# 30.1/28.4 ms, cross-entropy 65536x1000 96.6/93.6 -> 77.8/77.9 ms, attention L=S=4096 306/324 ->
# 289/302 ms; the memory-bound power-iteration sweeps gained nothing (42-46 vs 45-51 ms) and do not
# ask. fastla's kernels therefore ask for the full register width (the function attribute
# "prefer-vector-width", what clang's -mprefer-vector-width sets) through :func:`wide_vectors`,
# called at the top of each vectorised loop nest. It touches only fastla's own functions, never a
# user's Numba code. ``FASTLA_VECTOR_BYTES=32`` restores 256-bit loops.


def _wide_vectors_twin():
    return None


@intrinsic(_wide_vectors_twin)
def wide_vectors(typingctx):
    """Ask LLVM to vectorise the loops of the calling function at :func:`vector_bytes` (a no-op
    at run time). Inside a ``prange`` body it applies to the body's outlined function."""
    bits = 8 * vector_bytes()

    def codegen(context, builder, sig, args):
        # llvmlite's attribute set only knows keyword attributes; a string attribute is emitted
        # verbatim, which LLVM's IR parser accepts in the function's attribute list.
        set.add(builder.function.attributes, f'"prefer-vector-width"="{bits}"')
        return context.get_dummy_value()

    return nb_types.none(), codegen


# --------------------------------------------------------------------------- prefetch


def _prefetch_span_twin(x, start, stop):
    return None


@intrinsic(_prefetch_span_twin)
def prefetch_span(typingctx, x, start, stop):
    """Ask for the cache lines holding ``x[start:stop]`` (contiguous 1-D ``x``, the span clipped
    to it) to be read into cache, a ``llvm.prefetch`` (read, high locality) per line: a hint, never
    a fault. ``x`` may be None, or a 1-D array that is not C-contiguous (a row of a strided or
    F-ordered matrix, whose elements are not one span): then nothing is emitted (a caller with
    nothing to prefetch costs nothing, where an empty array would still cost its view and the
    loop's bounds)."""
    from llvmlite import ir

    if not (isinstance(start, nb_types.Integer) and isinstance(stop, nb_types.Integer)):
        return None
    strided_row = isinstance(x, nb_types.Array) and x.ndim == 1 and x.layout != "C"
    if isinstance(x, nb_types.NoneType) or strided_row:
        return nb_types.void(x, start, stop), lambda context, builder, sig, args: context.get_dummy_value()
    if not (isinstance(x, nb_types.Array) and x.ndim == 1 and x.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        size = builder.extract_value(arr.shape, 0)
        lo, hi = (
            context.cast(builder, v, t, nb_types.int64) for v, t in zip(args[1:], sig.args[1:], strict=True)
        )
        hi = builder.select(builder.icmp_signed("<", hi, size), hi, size)
        lo = builder.select(builder.icmp_signed(">", lo, ir.Constant(i64, 0)), lo, ir.Constant(i64, 0))
        step = max(1, 64 // context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype)))
        lines = builder.sdiv(
            builder.add(builder.sub(hi, lo), ir.Constant(i64, step - 1)), ir.Constant(i64, step)
        )
        with counted_loop(builder, lines) as loop:  # a negative count runs no iteration
            index = builder.add(lo, builder.mul(loop.index, ir.Constant(i64, step)))
            prefetch_line(builder, builder.gep(arr.data, [index]))
        return context.get_dummy_value()

    return nb_types.void(x, start, stop), codegen
