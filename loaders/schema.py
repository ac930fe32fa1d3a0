"""The Arrow schema of every table of the dataset: the single source of truth.

Writers cast to these schemas (``cast_table``), readers check them (``check_table``), and the dataset card's column
tables are generated from ``COLUMN_DOCS`` (a test checks that the card agrees). Units live in column names.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# 2.0.0: host fingerprints, sessions, calibration panels, the memory split; 2.1.0: checkpoints, training_curves;
# 2.2.0: the paired reference (measurements.reference_* and panel.reference_*, summary.reference_ms_median and
# latency_ratio_median)
SCHEMA_VERSION = "2.2.0"

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
    _f("device_id", _STR, "device (joins `devices`), e.g. `cpu-intel-xeon-2t-1ade831a` (fingerprinted) or "
       "`cpu-amd-epyc-2t` (release 0.1.0, host unknown)"),
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
    _f("reference_arch_id", _STR, "paired reference (joins `architectures`): the fixed architecture (the middle member "
       "of the space's calibration panel, same workload) whose step ran right after each recorded repeat; null when "
       "measured without one", True),
    _f("reference_ms", pa.list_(_F64), "the reference's step right after each recorded repeat, in order, as long as "
       "`latency_ms` (milliseconds); `latency_ms[i] / reference_ms[i]` cancels the host's speed wander; null when "
       "measured without a reference", True),
    _f("reference_missing_reason", _STR, "why `reference_ms` is null; null when measured", True),
    _f("energy_mj", pa.list_(_F64), "energy per forward, one value per energy sample (millijoules); null if missing",
       True),
    _f("energy_method", _STR, "energy counter used (e.g. `nvml total energy`), null if missing", True),
    _f("energy_window_ms", _F64, "duration of each energy sample's measurement window (milliseconds)", True),
    _f("energy_missing_reason", _STR, "why energy is null on this device; null when measured", True),
    _f("peak_memory_mib", _F64, "process-level peak memory of the step (MiB): peak resident set of a process of its "
       "own on CPU, CUDA allocator peak on GPU; see `memory_method`", True),
    _f("memory_baseline_mib", _F64, "the same measure before the model's own memory: on CPU the measuring process just "
       "before the model was built (torch imported); on CUDA the allocated memory just before the forward (MiB)", True),
    _f("model_memory_mib", _F64, "the model's own part of the process-level peak: `peak_memory_mib - "
       "memory_baseline_mib` (MiB); depends on the host's allocator and pages", True),
    _f("memory_method", _STR, "how memory was measured", True),
    _f("memory_missing_reason", _STR, "why memory is null; null when measured", True),
    _f("tensor_peak_mib", _F64, "deterministic tensor-level peak of the step (MiB): bytes of weights, buffers and "
       "inputs plus the peak of the bytes of tensors the step allocates (torch profiler memory events on CPU, "
       "`torch.cuda.max_memory_allocated` on GPU); the same on any host for one architecture, workload and torch build",
       True),
    _f("tensor_peak_method", _STR, "how `tensor_peak_mib` was counted; null when missing", True),
    _f("tensor_peak_missing_reason", _STR, "why `tensor_peak_mib` is null; null when measured", True),
    _f("threads", _I32, "torch intra-op threads"),
    _f("device_name", _STR, "device model as reported by the OS or driver"),
    _f("torch_version", _STR, "torch version used"),
    _f("driver_version", _STR, "NVIDIA driver version (GPU only)", True),
    _f("cuda_version", _STR, "CUDA runtime version torch was built with (GPU only)", True),
    _f("gpu_sm_clock_mhz", _F64, "SM clock when the measurement started (MHz, GPU only)", True),
    _f("gpu_power_limit_w", _F64, "enforced power limit (watts, GPU only)", True),
    _f("run_id", _STR, "identifier of the profiling run that wrote the row"),
    _f("session_id", _STR, "profiling session (joins `sessions`): one process on one host; null before sessions were "
       "recorded", True),
    _f("session_missing_reason", _STR, "why `session_id` is null (rows of release 0.1.0); null when set", True),
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

_CHECKPOINTS = [
    _f("checkpoint_sha256", _STR, "sha256 prefix (12 hex) of the weights file (joins `perplexity`)"),
    _f("space", _STR, "search space name"),
    _f("weights", _STR, "`supernet`: sandwich-rule weight-sharing supernet, every architecture's weights sliced from "
       "it; `standalone`: one architecture (`arch_id`) trained alone from scratch"),
    _f("arch_id", _STR, "the architecture a `standalone` checkpoint trained; null for a supernet", True),
    _f("default", _BOOL, "the checkpoint whose perplexities the loaders, surrogates, demo and card use by default: per "
       "space, the supernet checkpoint trained on the most tokens; false for every other"),
    _f("train_steps", _I64, "optimiser steps completed (count)"),
    _f("tokens_seen", _I64, "training target tokens seen, each counted once although several subnets see it (count)"),
    _f("batch_size", _I32, "sequences per optimiser step (count)"),
    _f("seq_len", _I32, "tokens per training sequence (count)"),
    _f("lr", _F64, "peak learning rate after the linear warm-up"),
    _f("min_lr", _F64, "final learning rate of the cosine decay"),
    _f("warmup_steps", _I64, "steps of linear warm-up (count)"),
    _f("weight_decay", _F64, "AdamW decoupled weight decay on matrices"),
    _f("n_random_subnets", _I32, "random subnets per step besides the largest and smallest (0 for standalone)"),
    _f("train_dtype", _STR, "compute dtype of training: `float32`, or `bfloat16` under autocast (float32 weights)"),
    _f("seed", _I64, "seed of the initial weights and of every step's batch and subnets"),
    _f("train_data_sha256", _STR, "sha256 prefix (12 hex) of the training tokens file; null where the training did "
       "not record it (the 600-step supernet of release 0.1.0)", True),
    _f("train_elapsed_s", _F64, "training wall time over all sessions (seconds)", True),
    _f("heldout_loss", _F64, "the last held-out evaluation during training: the largest subnet (supernet) or the "
       "architecture (standalone), nats per token; null when none was logged", True),
    _f("config_json", _STR, "the whole training configuration (`generation.train.TrainConfig`) as JSON"),
]

_TRAINING_CURVES = [
    _f("checkpoint_sha256", _STR, "the weights file whose training this is (joins `checkpoints`)"),
    _f("space", _STR, "search space name"),
    _f("split", _STR, "`train`: the loss of the step's own batch; `heldout`: an evaluation on held-out tokens"),
    _f("subnet", _STR, "`largest`, `smallest`, `random` (train: mean over the step's random subnets), `random_<i>` "
       "(held-out: fixed random subnets), `standalone` (the one architecture a standalone checkpoint trains)"),
    _f("canonical", _STR, "the subnet's architecture (`ArchConfig.canonical`; fixed random subnets need not be in "
       "`architectures`); null for the train split's `random` (other subnets each step)", True),
    _f("step", _I64, "optimiser steps completed when the loss was taken (count)"),
    _f("tokens_seen", _I64, "training target tokens seen by then (count)"),
    _f("lr", _F64, "learning rate of that step"),
    _f("loss", _F64, "mean next-token negative log-likelihood (nats per token)"),
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
    _f("fingerprinted", _BOOL, "true when `device_id` derives from the host fingerprint below; false for devices "
       "recorded before fingerprints (release 0.1.0), whose host is unknown"),
    _f("fingerprint_sha256", _STR, "sha256 prefix (16 hex) of the stable hardware part of the fingerprint (model name, "
       "vendor, family, model, stepping, microcode, flags, cores, caches, nominal clock, threads; GPU name, memory, "
       "power limit)", True),
    _f("cpu_vendor", _STR, "CPU vendor id, e.g. `GenuineIntel`, `AuthenticAMD`", True),
    _f("cpu_family", _I32, "CPU family number from /proc/cpuinfo", True),
    _f("cpu_model", _I32, "CPU model number from /proc/cpuinfo", True),
    _f("cpu_stepping", _I32, "CPU stepping from /proc/cpuinfo", True),
    _f("cpu_microcode", _STR, "microcode revision from /proc/cpuinfo, e.g. `0x1000065`", True),
    _f("cpu_flags_sha256", _STR, "sha256 prefix (16 hex) of the sorted CPU flags", True),
    _f("cpu_flags_key", _STR, "the speed-relevant flags present (avx2, avx512f, avx512_bf16, amx_tile, ...)", True),
    _f("physical_cores", _I32, "physical cores of the host (count)", True),
    _f("sockets", _I32, "CPU sockets (count)", True),
    _f("l1d_cache_kib", _I32, "L1 data cache per core (KiB)", True),
    _f("l2_cache_kib", _I32, "L2 cache per core (KiB)", True),
    _f("l3_cache_kib", _I32, "L3 cache as reported for core 0 (KiB)", True),
    _f("nominal_mhz", _F64, "nominal (maximum) clock: cpufreq max or the model name's GHz (MHz)", True),
    _f("gpu_memory_mib", _F64, "GPU memory from NVML (MiB); null on CPU", True),
    _f("gpu_power_limit_w", _F64, "enforced GPU power limit (watts); null on CPU", True),
    _f("gpu_ecc", _BOOL, "ECC enabled on the GPU; null on CPU or unknown", True),
    _f("gpu_mig", _BOOL, "MIG mode enabled on the GPU; null on CPU or unknown", True),
]

_SESSIONS = [
    _f("session_id", _STR, "profiling session: one process on one host (UTC start time + random suffix)"),
    _f("device_id", _STR, "device (joins `devices`)"),
    _f("host_key_sha256", _STR, "sha256 prefix (16 hex) of the host's identity (machine-id, DMI product uuid, boot "
       "id): differs between hosts and reboots, identifies nobody", True),
    _f("started_at", _TS, "UTC time the session started"),
    _f("ended_at", _TS, "UTC time the session ended; null if it was interrupted", True),
    _f("kernel", _STR, "operating-system kernel release"),
    _f("python_version", _STR, "Python version"),
    _f("torch_version", _STR, "torch version"),
    _f("torch_config_sha256", _STR, "sha256 prefix (16 hex) of `torch.__config__.show()` (build options)"),
    _f("torch_blas", _STR, "BLAS / oneDNN of the torch build, from `torch.__config__.show()`", True),
    _f("observed_mhz_start", _F64, "mean `cpu MHz` of /proc/cpuinfo at the start (MHz)", True),
    _f("observed_mhz_end", _F64, "mean `cpu MHz` of /proc/cpuinfo at the end (MHz)", True),
    _f("load_1m_start", _F64, "1-minute load average at the start (runnable tasks)", True),
    _f("driver_version", _STR, "NVIDIA driver version (GPU only)", True),
    _f("cuda_version", _STR, "CUDA runtime version of torch (GPU only)", True),
    _f("gpu_sm_clock_max_mhz", _F64, "maximum SM clock (MHz, GPU only)", True),
    _f("gpu_mem_clock_max_mhz", _F64, "maximum memory clock (MHz, GPU only)", True),
    _f("command", _STR, "what the session ran (the plan file or the profile request)"),
]

_PANEL = [
    _f("session_id", _STR, "session (joins `sessions`)"),
    _f("panel_position", _STR, "`start` or `end` of the session"),
    _f("arch_id", _STR, "architecture of the space's calibration panel (joins `architectures`)"),
    _f("space", _STR, "search space name"),
    _f("device_id", _STR, "device (joins `devices`)"),
    _f("phase", _STR, "workload phase"),
    _f("batch_size", _I32, "sequences per forward"),
    _f("seq_len", _I32, "tokens per sequence"),
    _f("dtype", _STR, "compute dtype"),
    _f("n_warmup", _I32, "untimed warm-up runs before the first recorded repeat"),
    _f("latency_ms", pa.list_(_F64), "every recorded repeat, in order (milliseconds)"),
    _f("other_cpu_cores", _F64, "mean CPU cores busy with other processes over the timed window (cores)", True),
    _f("reference_arch_id", _STR, "paired reference (joins `architectures`), as in `measurements`; null when the "
       "session was not paired", True),
    _f("reference_ms", pa.list_(_F64), "the reference's step right after each recorded repeat, as long as "
       "`latency_ms` (milliseconds); null when the session was not paired", True),
    _f("reference_missing_reason", _STR, "why `reference_ms` is null; null when measured", True),
    _f("measured_at", _TS, "UTC time the measurement finished"),
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
    _f("reference_ms_median", _F64, "median of the paired reference's steps (milliseconds); null without a reference",
       True),
    _f("latency_ratio_median", _F64, "median of `latency_ms[i] / reference_ms[i]` (ratio); null without a reference",
       True),
    _f("n_energy", _I32, "number of energy samples aggregated (count)", True),
    _f("energy_mj_median", _F64, "median energy per forward (millijoules)", True),
    _f("energy_mj_iqr", _F64, "interquartile range of energy per forward (millijoules)", True),
    _f("peak_memory_mib", _F64, "peak memory (MiB)", True),
]

TABLES: dict[str, list[tuple[pa.Field, str]]] = {
    "architectures": _ARCHITECTURES,
    "measurements": _MEASUREMENTS,
    "perplexity": _PERPLEXITY,
    "checkpoints": _CHECKPOINTS,
    "training_curves": _TRAINING_CURVES,
    "devices": _DEVICES,
    "summary": _SUMMARY,
    "sessions": _SESSIONS,
    "panel": _PANEL,
}

#: primary key of each table: no two rows may share these values
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "architectures": ("arch_id",),
    "measurements": ("arch_id", "device_id", "phase", "batch_size", "seq_len", "dtype", "weights"),
    "perplexity": ("arch_id", "checkpoint_sha256", "eval_split"),
    "checkpoints": ("checkpoint_sha256",),
    "training_curves": ("checkpoint_sha256", "split", "subnet", "step"),
    "devices": ("device_id",),
    "summary": ("arch_id", "device_id", "phase", "batch_size", "seq_len", "dtype", "weights"),
    "sessions": ("session_id",),
    "panel": ("session_id", "panel_position", "arch_id", "phase", "batch_size", "seq_len", "dtype"),
}

#: the value added columns (``ADDED_COLUMNS``) get in rows written before them, where it is not null
#: (``upgrade_table``)
LEGACY_VALUES: dict[str, dict[str, object]] = {
    "measurements": {"session_missing_reason": "measured before sessions were recorded (schema 1.0.0, release 0.1.0)",
                     "tensor_peak_missing_reason": "not measured before schema 2.0.0 (release 0.1.0)",
                     "reference_missing_reason": "measured without a paired reference (written before schema 2.2.0)"},
    "panel": {"reference_missing_reason": "measured without a paired reference (written before schema 2.2.0)"},
    "devices": {"fingerprinted": False},
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


#: columns each table gained after schema 1.0.0 (all others must be present in any part ever written): in 2.0.0, and
#: in 2.2.0 the paired reference (``reference_*`` of measurements, two nullable statistics of summary)
ADDED_COLUMNS = {
    "measurements": ("model_memory_mib", "tensor_peak_mib", "tensor_peak_method", "tensor_peak_missing_reason",
                     "session_id", "session_missing_reason", "reference_arch_id", "reference_ms",
                     "reference_missing_reason"),
    "summary": ("reference_ms_median", "latency_ratio_median"),
    "panel": ("reference_arch_id", "reference_ms", "reference_missing_reason"),
    "devices": ("fingerprinted", "fingerprint_sha256", "cpu_vendor", "cpu_family", "cpu_model", "cpu_stepping",
                "cpu_microcode", "cpu_flags_sha256", "cpu_flags_key", "physical_cores", "sockets", "l1d_cache_kib",
                "l2_cache_kib", "l3_cache_kib", "nominal_mhz", "gpu_memory_mib", "gpu_power_limit_w", "gpu_ecc",
                "gpu_mig"),
}


def upgrade_table(table: str, data: pa.Table) -> pa.Table:
    """``data`` written under an older schema (1.0.0 to 2.1.0), with the columns added since (``ADDED_COLUMNS``);
    unchanged when nothing is missing.

    Added columns are null, except ``LEGACY_VALUES`` (the reasons why, ``fingerprinted = false``) and
    ``model_memory_mib``, which is ``peak_memory_mib - memory_baseline_mib`` where both were measured; the columns
    come in the schema's order. A missing column that was never added later is left for ``cast_table`` to report.
    """
    missing = [c for c in ADDED_COLUMNS.get(table, ()) if c not in data.column_names]
    schema = schema_for(table)
    for column in missing:
        typ = schema.field(column).type
        if column == "model_memory_mib" and "peak_memory_mib" in data.column_names:
            values = pc.subtract(data.column("peak_memory_mib"), data.column("memory_baseline_mib"))
        else:
            values = pa.array([LEGACY_VALUES.get(table, {}).get(column)] * data.num_rows, typ)
        data = data.append_column(pa.field(column, typ), values.cast(typ))
    if not missing:
        return data
    order = {name: i for i, name in enumerate(schema.names)}  # the schema's order; columns it lacks stay last
    return data.select(sorted(data.column_names, key=lambda c: order.get(c, len(order))))


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
