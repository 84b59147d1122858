"""The activation cache on disk: safetensors shards plus a JSON manifest, written by `harvest`
(`hf-bae harvest`) and streamed back by `ActivationCache` in random order with bounded memory.

Layout of a cache folder:

```
manifest.json              model, revision, sites, hidden sizes, dtype, token count, text source, shards
shard-00000.safetensors    one tensor per site ([n, d], the cache dtype), plus token_ids [n] int32,
shard-00001.safetensors    positions [n] int32, rows [n] int64 (global row of each token) and
...                        input_ids [rows, context_length] int32 (the packed rows, for contexts)
```

Shards are standard safetensors files (`safetensors.torch.load_file` reads them). Each one is
written to a temporary name, renamed, and only then listed in the manifest (itself replaced
atomically), so the manifest lists complete shards only. Shards end at row boundaries and record
the row stream position after them; an interrupted harvest resumes there. A listed shard whose size
differs from the manifest (a truncated copy) is refused by the reader and rewritten by a resumed
harvest; files not in the manifest are deleted by it.

Reading (`ActivationCache.iter_batches`) shuffles the order of shards and, within windows of a
bounded number of tokens, the tokens: memory stays at about one window whatever the cache size.
The order is a function of (seed, epoch), and `start_batch` resumes it exactly without reading the
skipped part.

The package's `__init__` is its public boundary; one module per concept, in the order they build on
each other: `manifest` (`CacheManifest`, `ShardInfo`, the format's name, version and dtypes),
`shards` (the safetensors shard files), `writer` (`harvest`), `reader` (`ActivationCache`) and
`original_pickle` (`import_original_pickle`, only with an explicit `allow_pickle=True`). The cache builds
on `hf_bae.activations`, never the other way round.
"""

from .original_pickle import import_original_pickle
from .manifest import FORMAT, FORMAT_VERSION, STORAGE_DTYPES, CacheManifest, ShardInfo
from .reader import ActivationCache
from .writer import harvest

# Its name before the original code's things were all called "original" (scripts that use it keep working).
import_legacy_pickle = import_original_pickle

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "STORAGE_DTYPES",
    "ActivationCache",
    "CacheManifest",
    "ShardInfo",
    "harvest",
    "import_original_pickle",
    "import_legacy_pickle",
]
