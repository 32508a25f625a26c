"""Reading detector checkpoints with one clear error per failure, and finding where to resume."""
import glob
import os
import os.path as osp
import pickle
import re
import zipfile

import numpy as np
import torch
from mmcv.runner import load_state_dict
from mmdet.models.dense_heads import GARPNHead, RPNHead

from ..utils import error_summary, numpy_pickle_globals, unsupported_pickle_global


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says which."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file is there but cannot be read whole (truncated, or failing its checksums)."""


def load_safely(path, **load_kwargs):
    """``torch.load`` with the safe (weights-only) unpickler: tensors, plain Python values and
    numpy data; never code. An object it will not read is a CheckpointError naming it."""
    try:
        with torch.serialization.safe_globals(numpy_pickle_globals()):
            return torch.load(path, map_location='cpu', weights_only=True, **load_kwargs)
    except pickle.UnpicklingError as error:
        refused = unsupported_pickle_global(error)
        if refused is None:
            raise
        raise CheckpointError(f'checkpoint {path} holds an object of type {refused}, which '
                              f'the safe loader does not read (only tensors, plain Python values '
                              f'and numpy data): save its state_dict and meta alone') from None


def read_checkpoint(path):
    """Load a checkpoint file into a dict in CPU memory, raising CheckpointError with a readable
    reason. Its tensors are copied to the model's device where they are used (load_state_dict, the
    optimizer's load_state_dict), so reading a file never touches a GPU, and a GPU's failure
    (out of memory, a busy device) cannot pass for a damaged file."""
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    _check_stored_checksums(path)
    try:
        # mmcv checkpoints hold only tensors and plain Python values, so the safe loader reads them.
        checkpoint = load_safely(path)
    except CheckpointError:
        raise
    except Exception as error:  # torch raises many types for damaged files
        raise DamagedCheckpointError(f'cannot read checkpoint {path} (truncated or not a '
                                     f'PyTorch checkpoint?): {error_summary(error)}') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint {path} holds a {type(checkpoint).__name__}, not a dict of weights')
    return checkpoint


def _check_stored_checksums(path):
    """torch.save writes a zip archive with a CRC-32 per entry, which torch.load does not check:
    bytes damaged inside a weight (a disk or copy error) load as silently wrong weights. Reading
    the file once more costs about a second for the largest checkpoints here."""
    if not zipfile.is_zipfile(path):
        return  # an old-style (pickle) file, or no archive at all: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DamagedCheckpointError(f'cannot read checkpoint {path} (truncated or damaged?): '
                                     f'{error_summary(error)}') from None
    if damaged is not None:
        raise DamagedCheckpointError(f'checkpoint {path} is damaged: its entry {damaged} fails '
                                     f'its checksum (a disk or copy error?)')


def _strip_prefix(state_dict, prefix='module.'):
    # Checkpoints saved from a (Distributed)DataParallel wrapper prefix every key with 'module.'.
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def _class_head(model, key):
    """The module of ``model`` nearest above weight ``key`` that counts classes (num_classes), or
    None; the RPN's object-or-not count is not one."""
    parts = key.split('.')[:-1]
    for end in range(len(parts), 0, -1):
        module = model.get_submodule('.'.join(parts[:end]))
        if isinstance(getattr(module, 'num_classes', None), int):
            return None if isinstance(module, (RPNHead, GARPNHead)) else module
    return None


def _class_counts(model, state_dict, expected, wrong_shape):
    """(the checkpoint's and the model's number of classes, the box classifier weight that says
    so) where every weight of another shape is a class head's and differs in its first dimension
    only, as for another number of classes; else None."""
    if any(state_dict[key].shape[1:] != expected[key].shape[1:] or _class_head(model, key) is None
           for key in wrong_shape):
        return None
    for key in wrong_shape:
        if key.endswith('.fc_cls.weight'):  # its rows: the classes and the background
            count = _class_head(model, key).num_classes
            return count + state_dict[key].shape[0] - expected[key].shape[0], count, key
    return None


def load_detector_checkpoint(model, path, logger=None):
    """Load weights into ``model`` only if they fit it; returns the checkpoint dict.

    Unlike mmcv's lenient loader, a checkpoint of another architecture (weights missing or of the
    wrong shape) is an error rather than a warning followed by a randomly initialised model.
    Extra weights the model has no use for are tolerated and reported.
    """
    checkpoint = read_checkpoint(path)
    state_dict = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f'checkpoint {path} has no state_dict of tensors')
    state_dict = _strip_prefix(state_dict)

    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    wrong_shape = [key for key in expected
                   if key in state_dict and state_dict[key].shape != expected[key].shape]
    class_counts = None if missing else _class_counts(model, state_dict, expected, wrong_shape)
    if class_counts:
        key = class_counts[2]
        raise CheckpointError(f'checkpoint {path} predicts {class_counts[0]} classes, the model '
                              f'built from the config {class_counts[1]} ({key} is '
                              f'{tuple(state_dict[key].shape)} in the checkpoint, '
                              f'{tuple(expected[key].shape)} in the model): set '
                              f'num_classes={class_counts[0]} in every head of the config, and '
                              f'name the checkpoint\'s classes in its dataset\'s classes')
    if missing or wrong_shape:
        details = []
        if missing:
            details.append(f'{len(missing)} of the model\'s {len(expected)} weights are missing '
                           f'(first: {missing[0]})')
        if wrong_shape:
            key = wrong_shape[0]
            details.append(f'{len(wrong_shape)} have another shape (first: {key} is '
                           f'{tuple(state_dict[key].shape)} in the checkpoint, '
                           f'{tuple(expected[key].shape)} in the model)')
        raise CheckpointError(f'checkpoint {path} does not fit the model built from the config '
                              f'(another architecture?): ' + '; '.join(details))
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected and logger is not None:
        logger.warning(f'{len(unexpected)} checkpoint weights are not used by the model '
                       f'(first: {unexpected[0]})')
    model.load_state_dict({key: state_dict[key] for key in expected})
    return checkpoint


def load_weights_leniently(model, path, logger=None):
    """Fine-tuning's load (``load_from``): mmcv's, where weights missing or of another shape (a
    head for another number of classes) are warnings, but with read_checkpoint's one clear error
    for a missing or damaged file; logs how many of the model's weights it set (a run that loaded
    load_from said nothing of it, only that the backbone had no pretrained weights). Returns
    the checkpoint dict."""
    checkpoint = read_checkpoint(path)
    state_dict = _strip_prefix(checkpoint.get('state_dict', checkpoint))
    load_state_dict(model, state_dict, strict=False, logger=logger)
    if logger is not None:
        own = model.state_dict()
        loaded = sum(1 for key, value in state_dict.items()
                     if key in own and getattr(value, 'shape', None) == own[key].shape)
        logger.info(f'load_from: {loaded} of the model\'s {len(own)} weights set from {path}')
    return checkpoint


def holds_backbone_weights(path, backbone, prefix='backbone.'):
    """Whether the detector checkpoint ``path`` (a local file) holds a weight of ``backbone``'s
    shape under ``prefix`` for every one of its weights; read without loading the weights. Any
    file that cannot be read says False (loading it names the problem)."""
    try:
        try:
            checkpoint = load_safely(path, mmap=True)
        except RuntimeError:  # torch maps zip files only, not the legacy format
            checkpoint = load_safely(path)
        state_dict = _strip_prefix(checkpoint.get('state_dict', checkpoint))
        return all(getattr(state_dict.get(prefix + key), 'shape', None) == value.shape
                   for key, value in backbone.state_dict().items())
    except Exception:  # a damaged or foreign file
        return False


def restore_best_record(meta, work_dir, epoch, logger=None):
    """Bring the evaluation hook's record of the best checkpoint (``meta['hook_msgs']``) up to
    date after resuming from the checkpoint of ``epoch``.

    mmcv's evaluation hook runs after an epoch's checkpoint is written, so ``epoch_N.pth`` holds
    the best score of epochs before N only; resumed from it, the hook would compare the next
    scores with that older best and could keep a second best_*.pth beside the real one. The
    newest ``best_*_epoch_K.pth`` (K <= N) in ``work_dir`` carries the record in its own meta,
    read here without loading its weights.
    """
    found = []
    for path in glob.glob(osp.join(glob.escape(work_dir), 'best_*_epoch_*.pth')):
        match = re.fullmatch(r'best_.+_epoch_(\d+)\.pth', osp.basename(path))
        if match and int(match.group(1)) <= epoch and _is_complete_torch_file(path):
            found.append((int(match.group(1)), path))
    if not found:
        return
    best_path = max(found)[1]
    best = load_safely(best_path, mmap=True)
    record = (best.get('meta') or {}).get('hook_msgs') or {}
    if 'best_score' in record:
        # The file found here, not the path in its meta: a work dir copied from elsewhere names
        # the original's file, which the hook would delete when a better one comes.
        meta.setdefault('hook_msgs', {}).update(best_score=record['best_score'], best_ckpt=best_path)
        if logger is not None:
            logger.info(f'best checkpoint so far: {best_path} (score {record["best_score"]})')


def _is_complete_torch_file(path):
    # torch.save writes a zip archive whose directory sits at the very end: a file cut short by a
    # kill mid-save has no readable directory.
    try:
        with zipfile.ZipFile(path) as archive:
            return len(archive.namelist()) > 0
    except (zipfile.BadZipFile, OSError):
        return False


def hook_output_dir(work_dir, out_dir=None):
    """Where mmcv's checkpoint and evaluation hooks write a run's files: ``work_dir``, or with
    the hook's ``out_dir`` set, the folder of the work dir's name inside it (of its absolute
    path, as mmcv takes it: ``--work-dir .`` is named after the current folder)."""
    if not out_dir:
        return work_dir
    return osp.join(out_dir, osp.basename(osp.abspath(work_dir)))


def _stored_meta(path):
    """The meta ``path`` stores, read without its weights, or None where the file cannot be read
    as a checkpoint (damaged, not a zip archive, not a dict: resuming from it says which)."""
    try:
        return load_safely(path, mmap=True).get('meta') or {}
    except Exception:
        return None


def stored_seed(path):
    """The seed the run that saved ``path`` trained with (its ``meta['seed']``), or None where
    the file does not say or cannot be read (resuming from it reports why)."""
    seed = (_stored_meta(path) or {}).get('seed')
    return int(seed) if isinstance(seed, (int, np.integer)) else None


def ends_its_epoch(position):
    """Whether an iteration checkpoint's ``epoch_position`` covers its whole epoch (positions
    saved before they recorded ``epoch_batches`` do not say)."""
    return (position.get('epoch_batches') is not None
            and int(position.get('batches', 0)) >= int(position['epoch_batches']))


def _training_progress(path):
    """How far the run had trained when ``path`` was saved, from its meta: the finished epochs,
    the images done in the epoch under way (an iteration checkpoint's ``epoch_position``), and
    for an ``iter_N.pth`` without one (IterBasedRunner's) the iterations done; None where the
    file holds no readable meta.

    The iteration count only ranks files that nothing else does: it counts batches of the
    saving run's layout, so two files as far into training by epochs and images are equal,
    whatever their counts. One saved after an epoch's last batch is as far as that epoch's
    own checkpoint."""
    meta = _stored_meta(path)
    if meta is None:
        return None
    try:
        position = meta.get('epoch_position') or {}
        if ends_its_epoch(position):
            return int(meta.get('epoch', 0)) + 1, 0, 0
        images = (int(position.get('batches', 0)) * int(position.get('world_size') or 1)
                  * int(position.get('samples_per_gpu') or 1))
        by_iteration = not position and osp.basename(path).startswith('iter_')
        return int(meta.get('epoch', 0)), images, (int(meta.get('iter', 0)) if by_iteration else 0)
    except (AttributeError, TypeError, ValueError):  # a meta of another kind of file
        return None


def find_resumable_checkpoint(work_dir, logger=None, older_than=None):
    """The newest complete ``epoch_N.pth`` / ``iter_N.pth`` in ``work_dir``, or None; with
    ``older_than`` (a damaged checkpoint; ``latest.pth`` stands for the one it links to), the
    newest of those before it: of its own kind, by the N in the name (copying files rewrites
    their modification times), of the other kind, written before it. (After a resume with
    larger batches or more processes, an older run's ``iter_N.pth`` carry higher numbers and are
    left out: without the damaged file's meta, nothing tells them from later files of its run.)

    Newest by the training progress each file's meta records, not by N: an iteration
    checkpoint's N counts batches of its run's batch layout, so after a resume with another
    batch size or number of processes the older run's files carry the higher numbers, and
    ``epoch_12`` would lose to ``iter_2000``. Equal progress goes to the later write. Unlike
    mmdet's ``find_latest_checkpoint`` (which trusts ``latest.pth``), a checkpoint left
    half-written by a killed run is skipped in favour of the one before it.
    """
    name_pattern = r'(epoch|iter)_(\d+)\.pth'
    damaged = osp.realpath(older_than) if older_than is not None else None
    written_before = os.stat(damaged).st_mtime_ns if damaged and osp.exists(damaged) else None
    damaged_name = re.fullmatch(name_pattern, osp.basename(damaged)) if damaged else None
    ranked = []
    for path in glob.glob(osp.join(glob.escape(work_dir), '*.pth')):
        match = re.fullmatch(name_pattern, osp.basename(path))
        if match is None or (damaged is not None and osp.realpath(path) == damaged):
            continue
        written = os.stat(path).st_mtime_ns
        if damaged_name is not None and match.group(1) == damaged_name.group(1):
            if int(match.group(2)) >= int(damaged_name.group(2)):
                continue
        elif written_before is not None and written >= written_before:
            continue
        if not _is_complete_torch_file(path):
            if logger is not None:
                logger.warning(f'skipping incomplete checkpoint {path}')
            continue
        # Files without a readable meta come last; equal progress goes to the later write.
        progress = _training_progress(path) or (-1, -1, -1)
        ranked.append((progress, written, int(match.group(2)), path))
    return max(ranked)[-1] if ranked else None
