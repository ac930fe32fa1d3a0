"""The Arrow schema of every table of the dataset: the single source of truth.

Writers cast to these schemas (``cast_table``), readers check them (``check_table``), and the dataset card's column
tables are generated from ``COLUMN_DOCS`` (a test checks that the card agrees). Units live in column names.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1.0.0"

_STR = pa.string()
_I32 = pa.int32()
_I64 = pa.int64()
_F64 = pa.float64()
_BOOL = pa.bool_()
_TS = pa.timestamp("us", tz="UTC")


def _f(name: str, typ: pa.DataType, doc: str, nullable: bool = False) -> tuple[pa.Field, str]:
    return pa.field(name, typ, nullable=nullable), doc


_ARCHITECTURES = [
    _f("arch_id", _STR, "12-hex-character sha256 prefix of `canonical`; the join key of every table"),
    _f("space", _STR, "search space name (`hwgpt-bench spaces` lists them)"),
    _f("canonical", _STR, "canonical string `space|e<embed>|l<layers>|h<heads,...>|m<ratios,...>|b<0/1>`"),
    _f("embed_dim", _I32, "global embedding width (channels)"),
    _f("n_layer", _I32, "number of transformer blocks"),
    _f("n_head", pa.list_(_I32), "heads per layer (length n_layer); head size is the space's `head_size`"),
    _f("mlp_ratio", pa.list_(_I32), "MLP expansion ratio per layer (length n_layer)"),
    _f("bias", _BOOL, "bias in every linear layer and LayerNorm (never in the tied LM head)"),
    _f("params", _I64, "exact parameter count, tied embedding counted once (count)"),
    _f("params_non_embedding", _I64, "parameters outside the token embedding (count)"),
    _f("flops_per_token", _I64, "exact matmul FLOPs of one forward at the space's block size, divided by it (FLOP)"),
    _f("sample_seed", _I32, "seed of the sample this architecture was drawn in"),
    _f("sample_index", _I32, "position in that seeded sample (0 and 1 are the smallest and largest members)"),
]

_MEASUREMENTS = [
    _f("arch_id", _STR, "architecture (joins `architectures`)"),
    _f("space", _STR, "search space name"),
    _f("device_id", _STR, "device (joins `devices`), e.g. `cpu-amd-epyc-2t`"),
    _f("phase", _STR, "`forward` (full sequence, as the paper), `prefill` (forward filling a KV cache) or `decode` "
       "(one new token with a KV cache holding `seq_len` tokens)"),
    _f("batch_size", _I32, "sequences per forward"),
    _f("seq_len", _I32, "tokens per sequence (forward/prefill) or cached context length (decode)"),
    _f("dtype", _STR, "compute dtype: `float32`, or `bfloat16` under autocast"),
    _f("weights", _STR, "`random-init` (seeded, as the paper) or `supernet:<sha12>` (extracted subnet)"),
    _f("n_warmup", _I32, "untimed warm-up runs before the first recorded repeat"),
    _f("latency_ms", pa.list_(_F64), "every recorded repeat, in order (milliseconds)"),
    _f("latency_method", _STR, "clock used: `time.perf_counter_ns` on CPU, `torch.cuda.Event` with synchronise on GPU"),
    _f("host_load_1m", pa.list_(_F64), "1-minute load average read just before each repeat (runnable tasks)"),
    _f("other_cpu_cores", _F64, "mean CPU cores busy with other processes over the timed window (cores)", True),
    _f("energy_mj", pa.list_(_F64), "energy per forward, one value per energy sample (millijoules); null if missing",
       True),
    _f("energy_method", _STR, "energy counter used (e.g. `nvml total energy`), null if missing", True),
    _f("energy_window_ms", _F64, "duration of each energy sample's measurement window (milliseconds)", True),
    _f("energy_missing_reason", _STR, "why energy is null on this device; null when measured", True),
    _f("peak_memory_mib", _F64, "peak memory of the forward (MiB); see `memory_method`", True),
    _f("memory_baseline_mib", _F64, "the same measure before the model's own memory: on CPU the measuring process just "
       "before the model was built (torch imported); on CUDA the allocated memory just before the forward (MiB)", True),
    _f("memory_method", _STR, "how memory was measured", True),
    _f("memory_missing_reason", _STR, "why memory is null; null when measured", True),
    _f("threads", _I32, "torch intra-op threads"),
    _f("device_name", _STR, "device model as reported by the OS or driver"),
    _f("torch_version", _STR, "torch version used"),
    _f("driver_version", _STR, "NVIDIA driver version (GPU only)", True),
    _f("cuda_version", _STR, "CUDA runtime version torch was built with (GPU only)", True),
    _f("gpu_sm_clock_mhz", _F64, "SM clock when the measurement started (MHz, GPU only)", True),
    _f("gpu_power_limit_w", _F64, "enforced power limit (watts, GPU only)", True),
    _f("run_id", _STR, "identifier of the profiling run that wrote the row"),
    _f("measured_at", _TS, "UTC time the measurement finished"),
]

_PERPLEXITY = [
    _f("arch_id", _STR, "architecture (joins `architectures`)"),
    _f("space", _STR, "search space name"),
    _f("checkpoint_sha256", _STR, "sha256 prefix (12 hex) of the supernet checkpoint the weights were sliced from"),
    _f("eval_split", _STR, "name of the held-out token split"),
    _f("eval_tokens", _I64, "number of predicted tokens the mean is over (count)"),
    _f("nll", _F64, "token-weighted mean negative log-likelihood (nats per token)"),
    _f("perplexity", _F64, "exp(nll)"),
    _f("accuracy", _F64, "token-weighted next-token top-1 accuracy (fraction 0..1)"),
    _f("tokenizer", _STR, "tokenizer name and vocabulary size"),
    _f("run_id", _STR, "identifier of the evaluation run that wrote the row"),
    _f("measured_at", _TS, "UTC time the evaluation finished"),
]

_DEVICES = [
    _f("device_id", _STR, "device identifier used in `measurements`"),
    _f("kind", _STR, "`cpu` or `gpu`"),
    _f("device_name", _STR, "model name as reported by the OS or driver"),
    _f("logical_cores", _I32, "logical CPU cores of the host (count)"),
    _f("threads", _I32, "torch intra-op threads used for measurements"),
    _f("host_memory_gib", _F64, "host memory (GiB)"),
    _f("accelerator_memory_gib", _F64, "GPU memory (GiB); null on CPU", True),
    _f("energy_counter", _STR, "energy counter used, or null", True),
    _f("energy_missing_reason", _STR, "why energy is not measured, or null", True),
    _f("notes", _STR, "free-text notes on the device", True),
]

_SUMMARY = [
    _f("arch_id", _STR, "architecture"),
    _f("space", _STR, "search space name"),
    _f("device_id", _STR, "device"),
    _f("phase", _STR, "workload phase"),
    _f("batch_size", _I32, "sequences per forward"),
    _f("seq_len", _I32, "tokens per sequence or cached context"),
    _f("dtype", _STR, "compute dtype"),
    _f("weights", _STR, "`random-init` or `supernet:<sha12>`"),
    _f("n_latency", _I32, "number of latency repeats aggregated (count)"),
    _f("latency_ms_median", _F64, "median of the repeats (milliseconds)"),
    _f("latency_ms_iqr", _F64, "interquartile range of the repeats (milliseconds)"),
    _f("latency_ms_min", _F64, "fastest repeat (milliseconds)"),
    _f("n_energy", _I32, "number of energy samples aggregated (count)", True),
    _f("energy_mj_median", _F64, "median energy per forward (millijoules)", True),
    _f("energy_mj_iqr", _F64, "interquartile range of energy per forward (millijoules)", True),
    _f("peak_memory_mib", _F64, "peak memory (MiB)", True),
]

TABLES: dict[str, list[tuple[pa.Field, str]]] = {
    "architectures": _ARCHITECTURES,
    "measurements": _MEASUREMENTS,
    "perplexity": _PERPLEXITY,
    "devices": _DEVICES,
    "summary": _SUMMARY,
}

#: primary key of each table: no two rows may share these values
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "architectures": ("arch_id",),
    "measurements": ("arch_id", "device_id", "phase", "batch_size", "seq_len", "dtype", "weights"),
    "perplexity": ("arch_id", "checkpoint_sha256", "eval_split"),
    "devices": ("device_id",),
    "summary": ("arch_id", "device_id", "phase", "batch_size", "seq_len", "dtype", "weights"),
}

SCHEMAS: dict[str, pa.Schema] = {
    name: pa.schema([f for f, _ in cols], metadata={"schema_version": SCHEMA_VERSION, "table": name})
    for name, cols in TABLES.items()
}

COLUMN_DOCS: dict[str, dict[str, str]] = {name: {f.name: doc for f, doc in cols} for name, cols in TABLES.items()}


def schema_for(table: str) -> pa.Schema:
    """The Arrow schema of ``table``; a ``ValueError`` lists the known tables."""
    if table not in SCHEMAS:
        raise ValueError(f"table: unknown table {table!r}; allowed values: {sorted(SCHEMAS)}")
    return SCHEMAS[table]


def table_from_rows(table: str, rows: list[dict]) -> pa.Table:
    """Build a table of ``table``'s schema from dict rows; a missing or extra key is a ``ValueError`` naming it."""
    schema = schema_for(table)
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra, missing = set(row) - names, names - set(row)
        if extra or missing:
            raise ValueError(f"{table} row {i}: unexpected columns {sorted(extra)}, missing columns {sorted(missing)}")
    return pa.Table.from_pylist(rows, schema=schema)


def cast_table(table: str, data: pa.Table) -> pa.Table:
    """Reorder and cast ``data`` to ``table``'s schema; a missing column is a ``ValueError`` naming it."""
    schema = schema_for(table)
    missing = [n for n in schema.names if n not in data.column_names]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}")
    return data.select(schema.names).cast(schema)


def check_table(table: str, data: pa.Table) -> list[str]:
    """Every way ``data`` departs from the schema (names, order, types, nulls in non-nullable columns); [] if none."""
    schema = schema_for(table)
    problems = []
    if data.column_names != schema.names:
        problems.append(f"{table}: columns {data.column_names} differ from the schema's {schema.names}")
    for field in schema:
        if field.name not in data.column_names:
            continue
        col = data.column(field.name)
        if not col.type.equals(field.type):
            problems.append(f"{table}.{field.name}: type {col.type} differs from the schema's {field.type}")
        if not field.nullable and col.null_count:
            problems.append(f"{table}.{field.name}: {col.null_count} null values in a non-nullable column")
    return problems


def key_tuples(data: pa.Table, table: str) -> list[tuple]:
    """Primary-key tuples of each row of ``data``, in row order."""
    cols = [data.column(k).to_pylist() for k in PRIMARY_KEYS[table]]
    return list(zip(*cols, strict=True))
