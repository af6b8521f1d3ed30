"""What a job's parameters may be called and hold: the name rule and the numeric bounds.

A parameter (a workerSpec ``parameters`` entry, or a pod template's container ``env`` entry) becomes
an environment variable of the worker script under its own name. A variable can change what a process
loads or runs before the script's first line (``LD_PRELOAD``, ``PYTHONPATH``, ``BASH_ENV``, ...), so a
job-creation right would become a code-execution right on every node, past the code-root rule. The
rule below is the one both places use: spec validation (`schemas.check_parameters`: `flctl create`, the
aggregator's spec status) and, as defence in depth, `runtime.script_parameters` on the node that
starts the script.

A name is refused when it

1. is not a Kubernetes environment variable name (``[-._a-zA-Z][-._a-zA-Z0-9]*``, at most
   `MAX_PARAMETER_NAME_CHARS`): what the API server would refuse in a pod, and what Sedna's controller
   would have turned into a pod's env;
2. equals one of `DENIED_PARAMETER_NAMES` or starts with one of `DENIED_PARAMETER_PREFIXES`, compared
   case-insensitively: variables that make the dynamic loader, the C library, Python, a shell or another
   interpreter a script may spawn read code, options or files from where the variable says, plus the
   node's own ``FL_*`` namespace. Case-insensitive because some programs read lowercase spellings too
   (zsh's ``path``, curl's ``http_proxy``) and a deny list that a case change walks around is no rule;
3. equals one of `NODE_SET_NAMES` exactly: Sedna's variables the node service sets for every worker
   (``JOB_NAME``, ``MODEL_URL``, ...). Compared as written, because Sedna's own parameters are their
   lowercase spellings (``participants_count`` is a parameter scripts read before ``PARTICIPANTS_COUNT``).

A deny list rather than an allow pattern: Sedna's scripts read both ``batch_size`` and ``BATCH_SIZE``
(`Context.get_parameters`), so no casing or shape separates user names from system ones.

Numeric parameters whose meaning this system knows have bounds (`PARAMETER_BOUNDS`); a value past one
is an error naming the field and the bound, up front, not a job that runs for a century.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from schemas._worker_env import WorkerEnv

__all__ = [
    "DEFAULT_INIT_WAIT",
    "DENIED_PARAMETER_NAMES",
    "DENIED_PARAMETER_PREFIXES",
    "MAX_EXIT_ROUND",
    "MAX_INIT_WAIT",
    "MAX_PARAMETERS",
    "MAX_PARAMETER_NAME_CHARS",
    "MAX_PARAMETER_VALUE_CHARS",
    "MAX_TRAINING_WORKERS",
    "NODE_SET_NAMES",
    "PARAMETER_BOUNDS",
    "PARAMETER_CHOICES",
    "NumberBound",
    "parameter_name_problem",
    "parameter_value_problem",
]

# -- counts and sizes ------------------------------------------------------------------------------
MAX_TRAINING_WORKERS = 1000  # per job; Sedna's deployments have tens of edges
MAX_PARAMETERS = 256  # per worker (workerSpec.parameters or a container's env)
MAX_PARAMETER_NAME_CHARS = 128
MAX_PARAMETER_VALUE_CHARS = 8192  # hyper-parameters, not payloads; Linux allows 128 KiB per variable
MAX_EXIT_ROUND = 10_000  # also what the aggregator accepts from a script's config frame and edges in a plan
# Seconds the edges a plan does not ask for the initial weights wait for the round-0 model before they
# upload their own (`JobPlan.init_wait`, aggregationWorker parameter ``init_wait``): long enough for one
# edge's script to start and its init to arrive, short enough that a designated edge that never comes
# costs one wait, not a stuck job.
DEFAULT_INIT_WAIT = 20.0
MAX_INIT_WAIT = 3600.0

# -- names ---------------------------------------------------------------------------------------------
_K8S_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")

DENIED_PARAMETER_NAMES = frozenset(
    {
        # C library: files it loads or reads when these name them
        "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "TZ", "TZDIR",
        "LANG", "LANGUAGE", "TERMINFO", "TERMINFO_DIRS",
        # shells: where commands are found, what runs at start-up, how words are split and traced
        "PATH", "ENV", "SHELL", "SHELLOPTS", "BASHOPTS", "IFS", "PS1", "PS2", "PS3", "PS4",
        "PROMPT_COMMAND", "CDPATH", "GLOBIGNORE", "EXECIGNORE", "FPATH", "ZDOTDIR", "INPUTRC",
        # per-user files (Python's user site-packages, whose .pth files run code; rc files) and
        # where the script and its libraries write temporary files
        "HOME", "TMPDIR", "TMP", "TEMP",
        # commands that other programs run
        "EDITOR", "VISUAL", "PAGER", "BROWSER", "LESSOPEN", "LESSCLOSE", "SSH_ASKPASS", "SUDO_ASKPASS",
        # other interpreters and runtimes a script may spawn
        "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
        "TCLLIBPATH", "MPLBACKEND", "MPLCONFIGDIR",
        # TensorFlow / XLA / CUDA: flags that load or dump code, a library injected into CUDA processes
        "XLA_FLAGS", "TF_XLA_FLAGS", "CUDA_INJECTION32_PATH", "CUDA_INJECTION64_PATH",
        "LIBGL_DRIVERS_PATH", "OCL_ICD_VENDORS",
    }
)  # fmt: skip
"""Refused as parameter names, compared case-insensitively (see the module's docstring)."""

DENIED_PARAMETER_PREFIXES = (
    "LD_",  # the dynamic loader: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...
    "DYLD_",  # its macOS counterpart
    "GLIBC_",  # GLIBC_TUNABLES
    "MALLOC_",  # glibc's allocator checks and traces
    "LC_",  # locale names may be paths to locale files
    "PYTHON",  # PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONBREAKPOINT, PYTHONWARNINGS, ...
    "BASH_",  # BASH_ENV, BASH_FUNC_*, BASH_LOADABLES_PATH, BASH_XTRACEFD, ...
    "PERL",  # PERL5LIB, PERL5OPT, PERLLIB, PERL5DB
    "RUBY",  # RUBYOPT, RUBYLIB
    "GEM_",
    "LUA_",  # LUA_PATH, LUA_CPATH, LUA_INIT
    "OPENSSL_",  # OPENSSL_CONF loads engines and providers (shared objects)
    "GIT_",  # GIT_SSH_COMMAND, GIT_EXEC_PATH, GIT_CONFIG_*
    "XDG_",  # where programs read their configuration from
    "VK_",  # Vulkan ICDs and layers (shared objects)
    "_",  # private to a program by convention: _JAVA_OPTIONS, __EGL_VENDOR_LIBRARY_FILENAMES
    "FL_",  # this system's own: FL_NODE_ROOT, FL_WORKER_FD, FL_MQTT_* (the node's broker credentials)
)
"""Refused as the start of a parameter name, compared case-insensitively."""

NODE_SET_NAMES = frozenset(
    {
        WorkerEnv.JOB_NAME,
        WorkerEnv.NAMESPACE,
        WorkerEnv.WORKER_NAME,
        WorkerEnv.NODE_NAME,
        WorkerEnv.MODEL_URL,
        WorkerEnv.MODEL_NAME,
        WorkerEnv.MODEL_FORMAT,
        WorkerEnv.PARTICIPANTS_COUNT,
        WorkerEnv.PRETRAINED_MODEL_URL,
        WorkerEnv.TRAIN_DATASET_URL,
        WorkerEnv.DATASET_NAME,
    }
)
"""Sedna's variables the node service sets for its workers: refused as written (exact case).
(``TEST_DATASET_URL`` and ``ORIGINAL_DATASET_URL`` are Sedna's knobs a user sets, so they pass.)"""


def parameter_name_problem(name: str) -> str | None:
    """Why `name` may not be a parameter (it would become the script's environment variable), or None."""
    if len(name) > MAX_PARAMETER_NAME_CHARS:
        return f"a parameter name has at most {MAX_PARAMETER_NAME_CHARS} characters, this one {len(name)}"
    if not _K8S_ENV_NAME.fullmatch(name):
        return (
            f"{name!r} is not an environment variable name: expected letters, digits, '_', '-' and '.', "
            "not starting with a digit (as Kubernetes requires of env names)"
        )
    upper = name.upper()
    prefix = next((p for p in DENIED_PARAMETER_PREFIXES if upper.startswith(p)), None)
    if upper in DENIED_PARAMETER_NAMES or (prefix is not None and prefix != "FL_"):
        what = f"names starting with {prefix}" if prefix else "as an environment variable it"
        return (
            f"{name!r} is refused: {what} change{'' if prefix else 's'} how the worker's process is loaded or "
            "interpreted (the deny list is in docs/security.md, Worker parameters); pick another name"
        )
    if prefix == "FL_" or name in NODE_SET_NAMES:
        what = "names starting with FL_ belong to" if prefix else f"{name} is set by"
        return f"{name!r} is refused: {what} the node service for every worker; pick another name"
    return None


# -- numbers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberBound:
    """The values a numeric parameter may take: a whole number or a finite one, within [low, high]
    (`low_open`: low itself excluded; `high_open`: high itself excluded)."""

    whole: bool
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    unit: str = ""

    def describe(self) -> str:
        """`a whole number in [1, 10000]`, `a number in (0, 10]`, ..."""
        kind = "a whole number" if self.whole else "a number"
        unit = f" {self.unit}" if self.unit else ""
        return f"{kind}{unit} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def problem(self, value: str) -> str | None:
        """Why `value` (as written in the spec) is not within this bound, or None."""
        try:
            number = int(value) if self.whole else float(value)
        except ValueError:
            return f"expected {self.describe()}"
        if not math.isfinite(number):
            return f"expected {self.describe()}"
        below = number <= self.low if self.low_open else number < self.low
        above = number >= self.high if self.high_open else number > self.high
        if below or above:
            return f"expected {self.describe()}"
        return None


PARAMETER_BOUNDS: Mapping[str, NumberBound] = MappingProxyType(
    {
        "exit_round": NumberBound(whole=True, low=1, high=MAX_EXIT_ROUND),
        "participants_count": NumberBound(whole=True, low=1, high=MAX_TRAINING_WORKERS),
        "min_participants": NumberBound(whole=True, low=1, high=MAX_TRAINING_WORKERS),
        # 0: no deadline (a round waits for every training worker)
        "round_deadline": NumberBound(whole=False, low=0, high=7 * 24 * 3600, unit="of seconds"),
        # how long a participant must stay offline before an open round stops waiting for it
        "offline_grace": NumberBound(whole=False, low=0, high=24 * 3600, unit="of seconds"),
        # how long the edges not asked for the initial weights wait for the round-0 model before they upload
        # their own (0: every edge uploads its init at once, as before the plan named an init source)
        "init_wait": NumberBound(whole=False, low=0, high=MAX_INIT_WAIT, unit="of seconds"),
        "batch_size": NumberBound(whole=True, low=1, high=65536),
        "epochs": NumberBound(whole=True, low=1, high=10_000),
        "learning_rate": NumberBound(whole=False, low=0, high=10, low_open=True),
        "validation_split": NumberBound(whole=False, low=0, high=1, high_open=True),
        "validation": NumberBound(whole=False, low=0, high=1, high_open=True),
        # the aggregation worker's server-side optimisers (cloud_aggregator: FedAvgM, FedAdam, ...)
        "server_learning_rate": NumberBound(whole=False, low=0, high=10, low_open=True),
        "server_momentum": NumberBound(whole=False, low=0, high=1, high_open=True),
        "beta_1": NumberBound(whole=False, low=0, high=1, high_open=True),
        "beta_2": NumberBound(whole=False, low=0, high=1, high_open=True),
        "tau": NumberBound(whole=False, low=0, high=1, low_open=True),
        # FedProx's proximal weight (a training-worker parameter; 0, the default, is plain FedAvg training).
        # The paper tunes it in {0.001, 0.01, 0.1, 1}; past 1000 the term alone would dominate any loss.
        "mu": NumberBound(whole=False, low=0, high=1000),
        # Robust aggregation (cloud_aggregator._robust): the L2 bound on each update's delta from the
        # previous global model (0: no clipping), trimmed mean's fraction cut at each end (below one
        # half, else nothing is left), Krum's assumed attackers and Multi-Krum's kept updates.
        "clip_norm": NumberBound(whole=False, low=0, high=1e12),
        "trim_beta": NumberBound(whole=False, low=0, high=0.5, high_open=True),
        "krum_f": NumberBound(whole=True, low=0, high=1000),
        "krum_m": NumberBound(whole=True, low=0, high=1000),
        # Asynchronous aggregation (``aggregation_mode: async``): the updates a round's buffer folds
        # before it publishes the next model, how many model versions old an update may be, and how
        # hard staleness discounts it (weight ``(1 + s) ** -staleness_exponent``).
        "buffer_size": NumberBound(whole=True, low=1, high=MAX_TRAINING_WORKERS),
        "max_staleness": NumberBound(whole=True, low=0, high=1000),
        "staleness_exponent": NumberBound(whole=False, low=0, high=10),
        # Differential privacy (``dp_mode``, cloud_aggregator._privacy): the L2 bound C on each update's
        # delta, the noise multiplier z (the noise std is z*C on the round's sum of updates), the delta of
        # the (epsilon, delta) guarantee and the epsilon budget after which the job ends. The plan tells
        # an edge that noises its own update (local or distributed DP) its std as ``dp_noise_std``.
        "dp_clip_norm": NumberBound(whole=False, low=0, high=1e6, low_open=True),
        "dp_noise_multiplier": NumberBound(whole=False, low=0, high=1000, low_open=True),
        "dp_delta": NumberBound(whole=False, low=0, high=1, low_open=True, high_open=True),
        "dp_target_epsilon": NumberBound(whole=False, low=0, high=1e6, low_open=True),
        "dp_noise_std": NumberBound(whole=False, low=0, high=1e12),
        # Update compression (a training-worker parameter): the share of each tensor's entries top-k sends.
        "topk_fraction": NumberBound(whole=False, low=0, high=1, low_open=True),
        # Secure aggregation (``secure_aggregation: "true"``, an aggregation-worker parameter): Shamir's
        # threshold t (0: a majority of the training workers) and the bound every value of an edge's
        # delta is clipped to before the fixed-point encoding (schemas.SecAggSettings).
        "secagg_threshold": NumberBound(whole=True, low=0, high=MAX_TRAINING_WORKERS),
        "secagg_clip": NumberBound(whole=False, low=0, high=1e6, low_open=True),
        # Hierarchical rounds (``hierarchical: "true"``): seconds a site aggregator waits from its round's
        # start before it forwards the partial of the edges it has (0: it waits for every edge of its site).
        "site_deadline": NumberBound(whole=False, low=0, high=7 * 24 * 3600, unit="of seconds"),
    }
)
"""The parameters whose meaning this system knows and their bounds. A bound holds for the name as
written here and for its UPPERCASE spelling, the two that Sedna's `Context.get_parameters` reads."""


PARAMETER_CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # how the aggregation worker closes rounds: Sedna's synchronous rounds, or FedBuff-style buffers
        "aggregation_mode": ("sync", "async"),
        # where differential privacy's noise is added: nowhere, at the aggregator (central DP), on each edge
        # in full (local DP) or a 1/sqrt(n) share of it on each of n edges (distributed DP)
        "dp_mode": ("none", "central", "local", "distributed"),
        # how an edge encodes its update's delta (a training-worker parameter; schemas.compress_update)
        "compression": ("none", "float16", "int8", "topk"),
        # how the aggregator stores the global models it publishes (an aggregation-worker parameter)
        "global_compression": ("none", "float16"),
        # secure aggregation (an aggregation-worker parameter): the aggregator learns only each round's sum
        "secure_aggregation": ("false", "true"),
        # hierarchical rounds (an aggregation-worker parameter): each site's aggregator folds its edges'
        # updates and forwards one partial aggregate per round (cloud_aggregator.engine's Hierarchy)
        "hierarchical": ("false", "true"),
    }
)
"""The parameters this system knows that hold one of a few words (compared case-insensitively)."""


def parameter_value_problem(name: str, value: str) -> str | None:
    """Why `value` is not a valid value of parameter `name` (length, then its bound or choices), or None."""
    if len(value) > MAX_PARAMETER_VALUE_CHARS:
        return f"a parameter value has at most {MAX_PARAMETER_VALUE_CHARS} characters, this one {len(value)}"
    if "\x00" in value:
        return "a parameter value cannot contain a NUL character (it becomes an environment variable)"
    key = name.lower()
    if name not in (key, key.upper()):
        return None
    choices = PARAMETER_CHOICES.get(key)
    if choices is not None and value.strip().lower() not in choices:
        return f"expected one of {', '.join(choices)}, got {value!r}"
    bound = PARAMETER_BOUNDS.get(key)
    return bound.problem(value) if bound is not None else None
