"""Streaming shards: a training dataset as sequential webdataset tar files, read in a resumable order.

`dataset_creation/write_shards.py` turns any dataset the trainer reads (the InstructPix2Pix folder
layout, a pairs CSV, a latent cache) into `shards.json` plus `shard-000000.tar`, `shard-000001.tar`,
... of a few hundred MB each. The tars follow the webdataset layout (consecutive members
`<key>.<field>` form one sample; `webdataset.WebDataset` reads them as they are):

- `<key>.json`: {"index": the sample's index in the source dataset, "variants": its pairs, and for
  image pairs "instructions", one per pair};
- image pairs: `<key>.input_<v>.<ext>` and `<key>.edited_<v>.<ext>` per variant v, the source files'
  bytes unchanged (a JPEG stays that JPEG);
- a latent cache: `<key>.latents.safetensors`, the cache's fp16 FIELDS (V, F, C, h, w) and text (V, T, D).

`shards.json` records the source dataset config, each shard's name, sample count, size and sha256,
and the order the samples were written in (by default a fixed shuffle, so each shard holds a mix).

Reading: `ShardDataset` is indexed by the items `ShardSampler` yields (the data module pairs them):
- Epoch order: the shards, in an order drawn from (seed, epoch), form one sequence of N samples.
  Rank r of W takes the contiguous part [r*M, (r+1)*M) with M = N // W (training drops the N % W
  samples at the end, which change each epoch; validation pads by wrapping around). Each rank
  opens only the shards of its part; the parts are disjoint.
- A rank's part is cut into batches and each DataLoader worker takes a contiguous run of them; the
  DataLoader asks its workers for batches in turn, so the sampler orders the items so that batch j
  is the next batch of worker j % K. A worker streams its run through a shuffle buffer seeded by
  (seed, epoch, its start), which mixes samples beyond a shard's order.
- Each sample is augmented with `sample_seed(seed, epoch, index)` like the map-style datasets, so
  a shard dataset yields the tensors its source dataset yields for the same item in the same epoch.
- Resume: `ShardSampler.skip` leaves out the batches a checkpoint's epoch had done; a worker then
  replays its stream without decoding the skipped samples, so a resumed run sees the batches an
  uninterrupted one would have. The order depends on (seed, epoch, world size, workers, batch
  size): resume with the same world size, `num_workers` and `batch_size`.
- Errors: a missing shard, one that is not a whole tar file, holds another sample count than
  `shards.json` says, has another sha256 (checked when a shard is read whole) or holds an
  undecodable member stops the run with a `ShardError` naming the shard; nothing is skipped.

`url` is a local folder or any fsspec URL (`s3://bucket/prefix` with s3fs installed, `gs://`,
`https://`, `memory://`); every file is opened with `fsspec.open` and read as a stream.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import inspect
import io
import json
import math
import tarfile
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ldm.data.edit_dataset import draw_variant, edit_sample
from ldm.data.images import PairedTransform
from ldm.data.latent_cache import FIELDS, cache_draws, cached_sample
from ldm.data.sampler import epoch_permutation, sample_seed
from ldm.errors import UserError
from ldm.image_io import ImageInputError, decode_image
from ldm.util import ConfigError, get_obj_from_str

FORMAT = "sketch-pix2pix shards v1"
INDEX_FILE = "shards.json"
KINDS = ("pairs", "cache")
# PairedTransform settings of an image-pair source: applied when reading, so they may differ from the written config
AUGMENTATION_PARAMS = ("min_resize_res", "max_resize_res", "crop_res", "flip_prob", "on_bad_image")


class ShardError(UserError):
    """A missing, truncated or corrupt shard (or index); the message names the file."""


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def join_url(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def read_index(url: str) -> dict[str, Any]:
    """The `shards.json` of the shard set at `url`, checked to be a complete one."""
    import fsspec

    where = join_url(url, INDEX_FILE)
    try:
        with fsspec.open(where, "rb") as f:
            index = json.loads(f.read())
    except FileNotFoundError as err:
        raise ShardError(f"{where} does not exist; write the shards with dataset_creation/write_shards.py") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(f"cannot read {where}: {err}") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ShardError(f"{where} is not a {FORMAT!r} index; write the shards with dataset_creation/write_shards.py")
    if not index.get("complete"):
        done = len(index.get("shards", []))
        raise ShardError(
            f"{where}: the shards are incomplete ({done} written); run dataset_creation/write_shards.py again to finish"
        )
    return index


class _Hashing:
    """A file that hashes and counts the bytes read from or written to it (all tarfile's stream mode uses)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.bytes = 0

    def _count(self, data: bytes) -> None:
        self.digest.update(data)
        self.bytes += len(data)

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self._count(data)
        return data

    def write(self, data: bytes) -> int:
        self._count(data)
        return self.f.write(data)


def split_key(member: str) -> tuple[str, str]:
    """webdataset's grouping: the key is the name up to the first dot of its last path part; the rest is the field."""
    folder, _, base = member.rpartition("/")
    key, _, field = base.partition(".")
    return (f"{folder}/{key}" if folder else key), field


def read_shard(url: str, entry: Mapping[str, Any], first: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Samples `first` to `stop` of the shard `entry` of the shard set at `url`, each {"__key__", "__url__",
    field: bytes}.

    A shard read to its end is checked against the index: sample count, byte count and sha256.
    """
    import fsspec

    where = join_url(url, entry["name"])
    count = int(entry["samples"])
    stop = count if stop is None else stop
    whole = first == 0 and stop == count
    position, sample = -1, None
    try:
        with fsspec.open(where, "rb") as f:
            reader = _Hashing(f)
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    if not member.isfile():
                        continue
                    key, field = split_key(member.name)
                    if sample is None or key != sample["__key__"]:
                        if sample is not None and first <= position < stop:
                            yield sample
                        position += 1
                        if position >= stop and not whole:
                            return
                        sample = {"__key__": key, "__url__": where}  # webdataset's two keys
                    if first <= position < stop:  # a skipped sample's data is read past by the tar stream, unkept
                        sample[field] = tar.extractfile(member).read()  # type: ignore[union-attr]
                if sample is not None and first <= position < stop:
                    yield sample
            if whole:
                reader.read()  # the end-of-archive padding, so the digest covers the file
    except FileNotFoundError as err:
        raise ShardError(f"shard {where} is missing; write it again with dataset_creation/write_shards.py") from err
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(f"shard {where} is truncated or not a tar file ({err}); write it again") from err
    if position + 1 < stop:
        raise ShardError(f"shard {where} holds {position + 1} samples, the index says {count}; write it again")
    found = (position + 1, reader.bytes, reader.digest.hexdigest())
    if whole and found != (count, entry["bytes"], entry["sha256"]):
        raise ShardError(
            f"shard {where} differs from its index entry ({found[0]} samples, {found[1]} bytes, sha256 "
            f"{found[2][:12]}; expected {count}, {entry['bytes']}, {entry['sha256'][:12]}); write it again"
        )


@dataclasses.dataclass(frozen=True)
class Stream:
    """What one DataLoader worker reads in one epoch: positions [start, stop) of the epoch's sequence
    (taken modulo the sample count), shuffled through the buffer when `shuffle`."""

    seed: int
    epoch: int
    shuffle: bool
    start: int
    stop: int


def worker_runs(num_items: int, batch_size: int, num_workers: int) -> list[tuple[int, int]]:
    """Per worker: (first batch, batches) of its contiguous run of a rank's ceil(num_items / batch_size) batches.

    Worker w gets B // K batches, one more if w < B % K, so the DataLoader's turn-taking (batch j from
    worker j % K) yields all batches once. The worker that yields the last batch (which may be partial)
    holds the run at the end, so only the last batch the loader yields can be short.
    """
    total = math.ceil(num_items / batch_size)
    counts = [total // num_workers + (w < total % num_workers) for w in range(num_workers)]
    last = (total - 1) % num_workers
    runs: dict[int, tuple[int, int]] = {}
    first = 0
    for w in [w for w in range(num_workers) if w != last] + [last]:
        runs[w] = (first, counts[w])
        first += counts[w]
    return [runs[w] for w in range(num_workers)]


class ShardSampler(DistributedSampler):
    """Items `(Stream, k)` of a `ShardDataset` for one rank: the k-th sample of a worker's stream.

    Same interface as `ResumableSampler` (`len`, `set_epoch`, `skip`), so the data module resumes
    both alike: training (`drop_last=True`) takes N // world_size samples per rank and whole batches
    only; evaluation pads each rank to ceil(N / world_size) by wrapping around. `num_workers` is the
    DataLoader's (0 counts as 1).
    """

    def __init__(
        self,
        num_items: int,
        seed: int,
        batch_size: int,
        num_workers: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            range(num_items), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.batch_size = batch_size
        self.num_workers = max(1, num_workers)
        # num_samples (per rank) from DistributedSampler: N // W with drop_last, else ceil(N / W)
        self.used = self.num_samples - self.num_samples % batch_size if drop_last else self.num_samples
        self._skip: tuple[int, int] | None = None  # (epoch, batches to skip in it)

    def __len__(self) -> int:
        return self.used

    def skip(self, epoch: int, num_samples: int) -> None:
        """Leave out the first `num_samples` (whole batches) of this rank's `epoch`."""
        if not 0 <= num_samples <= self.used or num_samples % self.batch_size:
            raise ValueError(f"cannot skip {num_samples} samples of {self.used} in batches of {self.batch_size}")
        self._skip = (epoch, num_samples // self.batch_size)

    def streams(self, epoch: int) -> list[Stream]:
        """Each worker's stream in `epoch`."""
        base = self.rank * self.num_samples
        streams = []
        for first, count in worker_runs(self.used, self.batch_size, self.num_workers):
            start = base + first * self.batch_size
            stop = min(start + count * self.batch_size, base + self.used)
            streams.append(Stream(self.seed, epoch, self.shuffle, start, stop))
        return streams

    def __iter__(self) -> Iterator[tuple[Stream, int]]:
        epoch = self.epoch
        streams = self.streams(epoch)
        skip = self._skip[1] if self._skip is not None and self._skip[0] == epoch else 0
        for j in range(skip, math.ceil(self.used / self.batch_size)):
            stream = streams[j % self.num_workers]
            first = (j // self.num_workers) * self.batch_size
            for k in range(first, min(first + self.batch_size, stream.stop - stream.start)):
                yield stream, k


def _source_settings(source: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The parameters of an image-pair dataset config with its class's defaults filled in."""
    cls = get_obj_from_str(source["target"], f"{where}.target")
    bound = inspect.signature(cls).bind_partial(**dict(source.get("params") or {}))
    bound.apply_defaults()
    return dict(bound.arguments)


class ShardDataset(Dataset):
    """The shard set at `url` (a folder or fsspec URL), sampled by `ShardSampler` (see the module docstring).

    `source` is the dataset config the shards were written from (default: the one recorded in
    `shards.json`); for image pairs its augmentation settings (resize, crop, flip) apply when
    reading and may differ from the written ones, everything else must match. `shuffle_buffer`
    samples (raw bytes) per DataLoader worker are mixed; 1 keeps the written order.
    """

    def __init__(self, url: str, source: Mapping[str, Any] | None = None, shuffle_buffer: int = 1000) -> None:
        from ldm.data.latent_cache import _plain

        if shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer: must be at least 1, got {shuffle_buffer}")
        self.url = str(url)
        self.index = read_index(self.url)
        self.kind = self.index["kind"]
        self.shuffle_buffer = shuffle_buffer
        written = self.index["source"]
        source = written if source is None else _plain(source)
        if self.kind == "pairs":
            mine, theirs = _source_settings(source, "source"), _source_settings(written, "source")
            keys = {*mine, *theirs} - set(AUGMENTATION_PARAMS)
            differs = sorted(k for k in keys if mine.get(k) != theirs.get(k))
            if source["target"] != written["target"]:
                differs.insert(0, "target")
            self.transform = PairedTransform(*(mine[k] for k in AUGMENTATION_PARAMS[:4]))
        else:
            differs = [] if source == written else ["the cache config"]
            res = self.index["cache"]["resolution"]
            self.transform = PairedTransform(res, res, res, float(self.index["cache"]["flip_prob"]))
            self.encoder_identity: dict[str, Any] = self.index["cache"]["encoders"]
        if differs:
            raise ConfigError(
                f"source: the shards at {self.url} were written from another dataset (differs in "
                f"{', '.join(differs)}); write them again with dataset_creation/write_shards.py, or leave source "
                "out to use theirs"
            )
        self.draws_variant = bool(self.index["draws_variant"])
        self.entries: list[dict[str, Any]] = self.index["shards"]
        self._stream: tuple[Stream, Iterator[dict[str, Any]], int] | None = None  # (stream, raw samples, next k)

    @classmethod
    def check_sources(cls, params: Mapping[str, Any], prefix: str = "") -> None:
        """Raise FileNotFoundError if a local `params["url"]` has no shards.json (URLs are checked when built)."""
        from pathlib import Path

        url = str(params["url"])
        if "://" in url and not url.startswith("file://"):
            return
        folder = Path(url.removeprefix("file://"))
        if not (folder / INDEX_FILE).is_file():
            key = f"{prefix}.url" if prefix else "url"
            raise FileNotFoundError(
                f"shard set {folder} does not exist (no {INDEX_FILE}); set {key} to a folder made by "
                "dataset_creation/write_shards.py"
            )

    def __len__(self) -> int:
        return int(self.index["num_samples"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}  # each DataLoader worker opens its own stream

    def shard_order(self, seed: int, epoch: int, shuffle: bool) -> list[int]:
        n = len(self.entries)
        return epoch_permutation(seed, n, epoch) if shuffle else list(range(n))

    def positions(self, stream: Stream) -> Iterator[dict[str, Any]]:
        """The raw samples at positions [stream.start, stream.stop) of the epoch's sequence, in order."""
        order = self.shard_order(stream.seed, stream.epoch, stream.shuffle)
        counts = [int(self.entries[s]["samples"]) for s in order]
        starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        total = starts[-1]
        p = stream.start
        while p < stream.stop:
            q = p % total
            s = bisect.bisect_right(starts, q) - 1
            first = q - starts[s]
            take = min(counts[s] - first, stream.stop - p)
            yield from read_shard(self.url, self.entries[order[s]], first, first + take)
            p += take

    def raw_stream(self, stream: Stream) -> Iterator[dict[str, Any]]:
        """`positions(stream)` through the shuffle buffer (a random pick replaces each new arrival)."""
        samples = self.positions(stream)
        if not stream.shuffle or self.shuffle_buffer == 1:
            yield from samples
            return
        rng = np.random.default_rng(np.random.SeedSequence(stream.seed, spawn_key=(stream.epoch, stream.start)))
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def raw(self, item: tuple[Stream, int]) -> dict[str, Any]:
        """The raw sample of `item`: continues this process's stream, restarting it only to go back."""
        stream, k = item
        if self._stream is None or self._stream[0] != stream or k < self._stream[2]:
            self._stream = (stream, self.raw_stream(stream), 0)
        _, samples, next_k = self._stream
        try:
            for _ in range(k - next_k):  # skipped: a resumed epoch, read past without decoding
                next(samples)
            sample = next(samples)
        except StopIteration:
            raise IndexError(f"item {k} is past the end of {stream}") from None
        self._stream = (stream, samples, k + 1)
        return sample

    def __getitem__(self, item: tuple[Stream, int]) -> dict[str, Any]:
        stream, _ = item
        sample = self.raw(item)
        meta = json.loads(sample["json"])
        generator_seed = sample_seed(stream.seed, stream.epoch, int(meta["index"]))
        where = f"{sample['__url__']}:{sample['__key__']}"
        try:
            if self.kind == "cache":
                from safetensors.torch import load

                variant, flip = cache_draws(int(meta["variants"]), self.draws_variant, self.transform, generator_seed)
                tensors = load(sample["latents.safetensors"])
                return cached_sample({name: tensors[name][variant] for name in (*FIELDS, "text")}, flip)
            generator = torch.Generator().manual_seed(generator_seed)
            v = draw_variant(int(meta["variants"]), self.draws_variant, generator)
            images = []
            for role in ("input", "edited"):
                field = next(f for f in sample if f.startswith(f"{role}_{v}."))
                images.append(decode_image(sample[field], f"{where}.{field}"))
            return edit_sample(self.transform, images[0], images[1], meta["instructions"][v], generator)
        except (KeyError, StopIteration, ValueError, ImageInputError) as err:
            raise ShardError(f"sample {where} is incomplete or corrupt ({err!r}); write its shard again") from err


def describe(index: Mapping[str, Any]) -> str:
    """One line about a shard set: samples, shards and size."""
    size = sum(int(e["bytes"]) for e in index["shards"])
    return f"{index['num_samples']} samples ({index['kind']}) in {len(index['shards'])} shards, {size / 1e6:.1f} MB"


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add `data` as `name` with fixed metadata, so the same samples always give the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _pair_members(dataset: Any, index: int) -> dict[str, bytes]:
    """A sample of an image-pair dataset as shard members: its files' bytes (checked to decode) and json."""
    from pathlib import Path

    instructions = []
    members: dict[str, bytes] = {}
    for v in range(dataset.num_variants(index)):
        input_path, edited_path, instruction = dataset.variant_files(index, v)
        for role, path in (("input", Path(input_path)), ("edited", Path(edited_path))):
            try:
                data = path.read_bytes()
            except OSError as err:
                raise ImageInputError(path, "no such file" if not path.exists() else err) from err
            decode_image(data, str(path))  # an unreadable image stops the write, naming the file
            members[f"{role}_{v}{path.suffix.lower() or '.img'}"] = data
        instructions.append(instruction)
    meta = {"index": index, "variants": len(instructions), "instructions": instructions}
    return {"json": json.dumps(meta).encode(), **members}


def _cache_members(dataset: Any, index: int) -> dict[str, bytes]:
    """A sample of a latent cache as shard members: all its pairs' tensors in one safetensors blob, and json."""
    from safetensors.torch import save

    variants = dataset.variants[index]
    rows = []
    for v in range(variants):
        row = dataset.first_row[index] + v
        shard, r = dataset._shard(row // dataset.shard_size), row % dataset.shard_size
        rows.append({name: shard.get_slice(name)[r : r + 1][0] for name in (*FIELDS, "text")})
    tensors = {name: torch.stack([row[name] for row in rows]).contiguous() for name in rows[0]}  # (V, ...)
    meta = {"index": index, "variants": variants}
    return {"json": json.dumps(meta).encode(), "latents.safetensors": save(tensors)}


def write_shards(
    dataset: Any, dataset_config: Any, out: Any, shard_bytes: int = 256_000_000, order_seed: int | None = 0
) -> dict[str, Any]:
    """Write `dataset` (an image-pair dataset or a `CachedEditDataset`, built from `dataset_config`)
    as shards of about `shard_bytes` into the folder `out`; return the index.

    Samples are written in the order of a permutation drawn from `order_seed` (None: dataset order).
    Each shard is written whole (temporary file, rename) and then listed in `shards.json`, which says
    `complete` at the end, so an interrupted write resumes after its last listed shard; a folder
    holding shards of another write is refused.
    """
    from pathlib import Path

    from tqdm import tqdm

    from ldm.data.latent_cache import CachedEditDataset, _plain
    from ldm.io import atomic_writer, write_text_atomic

    out = Path(out)
    cached = isinstance(dataset, CachedEditDataset)
    members_of = _cache_members if cached else _pair_members
    n = len(dataset)
    order = list(range(n)) if order_seed is None else epoch_permutation(order_seed, n, 0)
    probe = [sum(len(b) for b in members_of(dataset, i).values()) for i in order[:32]]
    per_shard = max(1, int(shard_bytes // (sum(probe) / len(probe))))
    plan: dict[str, Any] = {
        "format": FORMAT,
        "kind": "cache" if cached else "pairs",
        "source": _plain(dataset_config),
        "draws_variant": bool(dataset.draws_variant),
        "num_samples": n,
        "order_seed": order_seed,
        "samples_per_shard": per_shard,
    }
    if cached:
        plan["cache"] = {k: dataset.meta[k] for k in ("resolution", "flip_prob", "encoders")}
    done: list[dict[str, Any]] = []
    index_file = out / INDEX_FILE
    if index_file.is_file():
        existing = json.loads(index_file.read_text())
        differs = sorted(k for k in plan if existing.get(k) != plan[k])
        if differs:
            raise ShardError(
                f"{out} holds shards of another write (differs in: {', '.join(differs)}); choose another folder or "
                "delete it"
            )
        done = [e for e in existing["shards"] if (out / e["name"]).is_file()]
        done = done[: next((k for k, e in enumerate(done) if e["name"] != shard_name(k)), len(done))]
    num_shards = math.ceil(n / per_shard)
    bar = tqdm(total=n, initial=min(n, len(done) * per_shard), unit="sample", desc=f"shards {out.name}", disable=None)
    entries = list(done)
    for k in range(len(done), num_shards):
        positions = order[k * per_shard : (k + 1) * per_shard]
        with atomic_writer(out / shard_name(k)) as f:
            hashing = _Hashing(f)
            with tarfile.open(fileobj=hashing, mode="w|") as tar:  # type: ignore[call-overload]
                for position, i in enumerate(positions, start=k * per_shard):
                    for field, data in members_of(dataset, i).items():
                        _tar_member(tar, f"{position:09d}.{field}", data)
                    bar.update(1)
        entries.append({"name": shard_name(k), "samples": len(positions), "bytes": hashing.bytes,
                        "sha256": hashing.digest.hexdigest()})  # fmt: skip
        complete = k == num_shards - 1
        write_text_atomic(index_file, json.dumps({**plan, "complete": complete, "shards": entries}, indent=1))
    bar.close()
    index = {**plan, "complete": True, "shards": entries}
    if len(done) == num_shards:  # nothing was left to write: make sure the index says so
        write_text_atomic(index_file, json.dumps(index, indent=1))
    return index
