"""Dataset scale: the shard store, ranks, reduced precision, the batch loop and the store's summary."""

from xcf.scale.distributed import DistContext, init_distributed
from xcf.scale.precision import accelerate
from xcf.scale.store import ShardStore, StoreError, StoreMismatchError, StoreWriteError
from xcf.scale.stream import StreamOutcome, shift_target, stream_audit
from xcf.scale.summary import StoreSummary, load_results, summarise_store

__all__ = [
    "DistContext", "ShardStore", "StoreError", "StoreMismatchError", "StoreSummary", "StoreWriteError",
    "StreamOutcome", "accelerate", "init_distributed", "load_results", "shift_target", "stream_audit",
    "summarise_store",
]
