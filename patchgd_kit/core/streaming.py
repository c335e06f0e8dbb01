"""Streaming SGD (Pinckaers, van Ginneken, Litjens, TPAMI 2020) as the method ``streaming``, through the
``lightstream`` package (pinned: ``LIGHTSTREAM_VERSION``), imported only when this method is built.

The trunk runs tile by tile: a forward over tiles without autograd gives the whole output map, the
head takes its gradient, and a backward re-runs each tile with autograd and crops what the tile cannot
know; conv weight gradients are then exactly plain backprop's. Which border of each layer a tile cannot
know is found once, on a blank tile ("statistics"). lightstream 1.0.7 gets that wrong for torchvision's
ResNets and MobileNetV2 and cannot run it without CUDA (docs/streaming.md); this adapter subclasses its
classes, from outside the library, so that:

- statistics run on the module's device (the library ends them with an unconditional ``.cuda()``);
- the statistics are exact: "contamination" (a tile value that may differ from the whole image's)
  spreads forward from the tile's edges and backward from the cropped output through every conv and
  max-pool window, BatchNorm set neutral (mean 0, variance 1) meanwhile; none valid: "tile too small";
- the backward's re-forward runs in the module's dtype (the library forces CUDA autocast, and its conv
  casts to bf16 under it), in AMP's dtype only when AMP is asked;
- BatchNorm is frozen (eval, affine not trained): overlapping tiles would count its batch statistics
  and its affine gradients more than once. The authors' pipeline does the same.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from importlib import metadata

import torch
from torch import nn
from torch.nn import functional as F

from . import gd
from .models import backbone_of, classifier_model
from ..errors import KitError

LIGHTSTREAM_VERSION = "1.0.7"
# Input-gradient border (top + bottom) that no tile knows exactly, measured with the exact statistics
# (benchmarks/bench_streaming.py prints it); the same at any tile size.
GRADIENT_BORDER = {"resnet50": 406 + 405, "mobilenet_v2": 470 + 469}
LABELS = {"resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2"}


def min_tile(backbone: str) -> int:
    """The smallest tile (a multiple of the output stride) that leaves one stride of exact gradient."""
    stride = backbone_of(backbone).stride
    return math.ceil((GRADIENT_BORDER[backbone] + stride) / stride) * stride


def tile_for(backbone: str, image_size: int) -> int:
    """The kit's tile. First the widest useful one: valid rows at least the border (recomputation ≤ 4x of
    the image's area), else the largest multiple of the stride below the image side (a tile of the whole
    image is plain backprop). Then the smallest tile that streams the image in no more backward tiles:
    less memory and less work at the same count (1024 px ResNet50: 960 px, 2 x 2 tiles, where the
    widest is 992 px, 94% of the image, and saves nothing)."""
    stride, smallest = backbone_of(backbone).stride, min_tile(backbone)
    preferred = math.ceil((2 * GRADIENT_BORDER[backbone] + stride) / stride) * stride
    widest = min(preferred, (image_size - 1) // stride * stride)
    if widest < smallest:
        raise KitError(f"image {image_size} px is smaller than {LABELS[backbone]}'s smallest usable tile "
                       f"({smallest} px): streaming cannot apply")
    count = backward_tiles_per_side(backbone, image_size, widest)
    return next(t for t in range(smallest, widest + 1, stride)
                if backward_tiles_per_side(backbone, image_size, t) <= count)


def backward_tiles_per_side(backbone: str, image_size: int, tile_size: int) -> int:
    """Tiles per side of lightstream's backward (StreamingCNN.backward): the exact part of a tile, in
    whole output strides, steps over the image less the border."""
    if image_size <= tile_size:
        return 1
    stride = backbone_of(backbone).stride
    valid = (tile_size - GRADIENT_BORDER[backbone]) // stride * stride
    return math.ceil((image_size - GRADIENT_BORDER[backbone]) / valid)


def check_tile(backbone: str, tile_size: int) -> None:
    if tile_size < min_tile(backbone):
        raise KitError(f"tile too small: {LABELS[backbone]} needs ≥ {min_tile(backbone)} px, got {tile_size}")


def _lightstream():
    """lightstream's two classes this adapter builds on, after checking the version it was written for."""
    try:
        installed = metadata.version("lightstream")
    except metadata.PackageNotFoundError:
        raise KitError(f"streaming needs lightstream=={LIGHTSTREAM_VERSION} (make install)") from None
    if installed != LIGHTSTREAM_VERSION:
        raise KitError(f"streaming is written for lightstream=={LIGHTSTREAM_VERSION}, found {installed}: "
                       "check docs/streaming.md's fixes against it, then change the pin")
    from lightstream.core.constructor import StreamingConstructor
    from lightstream.core.scnn.scnn import StreamingCNN
    from lightstream.core.scnn.utils import Lost
    return StreamingConstructor, StreamingCNN, Lost


def _window(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding) per axis of a conv or pool; dilation other than 1 is not handled."""
    pair = nn.modules.utils._pair
    if pair(getattr(module, "dilation", 1)) != (1, 1) or getattr(module, "ceil_mode", False):
        raise KitError(f"streaming handles no dilated or ceil-mode windows: {module}")
    return pair(module.kernel_size), pair(module.stride), pair(module.padding)


def spread_forward(contaminated: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Output positions whose window holds a contaminated input or reaches past the tile (padding in the
    tile, image in the whole picture). `contaminated`: (H, W) bool."""
    (kh, kw), stride, (ph, pw) = _window(module)
    padded = F.pad(contaminated[None, None].float(), (pw, pw, ph, ph), value=1.0)
    return F.conv2d(padded, padded.new_ones(1, 1, kh, kw), stride=stride)[0, 0] > 0


def spread_backward(contaminated: torch.Tensor, module: nn.Module, input_shape: tuple[int, int]) -> torch.Tensor:
    """Input positions that feed a contaminated output, or an output past the tile's edge (which the whole
    image has and the tile has not); for a max-pool its whole window, as which input wins depends on values."""
    (kh, kw), (sh, sw), (ph, pw) = _window(module)
    mh, mw = -(-kh // sh) + 1, -(-kw // sw) + 1  # rings of outside outputs that can reach the tile
    padded = F.pad(contaminated[None, None].float(), (mw, mw, mh, mh), value=1.0)
    spread = F.conv_transpose2d(padded, padded.new_ones(1, 1, kh, kw), stride=(sh, sw))[0, 0]
    top, left = ph + mh * sh, pw + mw * sw
    return spread[top:top + input_shape[0], left:left + input_shape[1]] > 0


def valid_lost(contaminated: torch.Tensor, where: str):
    """lightstream's Lost (top, left, bottom, right): the border around the exact (uncontaminated) part."""
    exact = (~contaminated).nonzero()
    if len(exact) == 0:
        raise KitError(f"tile too small: no exact value left at {where}")
    (top, left), (last_row, last_col) = exact.min(0).values.tolist(), exact.max(0).values.tolist()
    return _lightstream()[2](top, left, contaminated.shape[0] - 1 - last_row, contaminated.shape[1] - 1 - last_col)


@contextlib.contextmanager
def _neutral_batchnorm(module: nn.Module):
    """Running mean 0 and variance 1 while statistics run (lightstream sets the affine to 1 and 0 but keeps
    pretrained running statistics, which can turn a blank tile negative and its maps into nonsense)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    try:
        yield
    finally:
        for m, (mean, var) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)


@contextlib.contextmanager
def _reforward_in(module: nn.Module, amp_dtype: torch.dtype | None):
    """Inside lightstream's backward, each tile's re-forward in the module's dtype (or AMP's when asked):
    the library wraps it in CUDA autocast at the module's dtype, under which its conv casts inputs to
    bf16; hooks on the streamed module switch that autocast off around each call."""
    stacks = []

    def enter(_module, _inputs):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast("cuda", enabled=False))
        device = next(_module.parameters()).device
        stack.enter_context(gd.autocast(device, amp_dtype))
        stacks.append(stack)

    def leave(_module, _inputs, _output):
        stacks.pop().close()

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with warnings.catch_warnings():  # the library's autocast("cuda") on a machine without CUDA
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            yield
    finally:
        for handle in handles:
            handle.remove()


def _triple(value):
    """lightstream's own 3-tuple (a pair (2, 2) becomes (0, 2, 2), as its stride products expect)."""
    from lightstream.core.scnn.utils import _ntuple
    return _ntuple(3)(value)


class _ExactStatistics:
    """What ExactStreamingCNN changes in lightstream's StreamingCNN: exact statistics on the module's
    device (module docstring), autocast and the re-forward's precision. A mixin, so that lightstream is
    imported only when a streaming model is built (``_classes``)."""
    amp_dtype: torch.dtype | None = None

    def _configure(self):
        state, flags = self._save_parameters(), self._set_cudnn_flags_to_determistic()
        grad_mode = torch.is_grad_enabled()  # the library's statistics switch it off and leave it so
        self._reset_parameters_to_constant()
        self._add_hooks_for_statistics()
        self._stats_per_grad_fn = {}
        tile = torch.zeros(self.tile_shape, dtype=self.dtype, device=self.device, requires_grad=True)
        try:
            with _neutral_batchnorm(self.stream_module):
                self._gather_forward_statistics(tile)
                self._gather_backward_statistics(tile)
        finally:
            self._remove_hooks()
            self._hooks = []
            self._restore_parameters(state)
            self._set_cudnn_flags(*flags)
            torch.set_grad_enabled(grad_mode)
        self._convert_modules_for_streaming(self.stream_module)
        self._add_hooks_for_streaming()
        self._saved_tensors = {}
        del self._stats_per_grad_fn
        for param in self.stream_module.parameters():
            param.grad = None

    def _gather_forward_statistics(self, tile):
        with torch.no_grad():
            output = self.stream_module(tile)
        self.tile_output_lost = valid_lost(output.sum(1)[0] > 0, "the trunk's output")

    def _forward_gather_statistics_hook(self, module, inputs, output):
        if torch.is_grad_enabled():  # the library's second pass: output strides per layer
            return super()._forward_gather_statistics_hook(module, inputs, output)
        contaminated = spread_forward(inputs[0].sum(1)[0] > 0, module)
        output.copy_(contaminated.to(output.dtype).expand_as(output))
        self._module_stats[module] = {"lost": valid_lost(contaminated, str(module)),
                                      "stride": _triple(module.stride), "module": module}

    def _gather_backward_statistics(self, tile):
        with torch.enable_grad():
            output = self.stream_module(tile)
            self._tile_output_shape = output.shape
            lost = self.tile_output_lost
            contamination = torch.ones_like(output)  # what the crop leaves out: missing gradient
            contamination[:, :, lost.top:output.shape[2] - lost.bottom, lost.left:output.shape[3] - lost.right] = 0
            output.backward(contamination)
        stats = self._prev_stats(output)
        self.output_stride = (stats["output_stride"] * torch.tensor(stats["stride"]) if stats
                              else torch.tensor([1, 1, 1]))
        self.tile_gradient_lost = valid_lost(tile.grad.sum(1)[0] > 0, "the input tile")
        lost, side = self.tile_gradient_lost, self.tile_shape[2]
        if (side - lost.top - lost.bottom) // int(self.output_stride[1]) < 1:
            raise KitError(f"tile too small: {side} px leaves {side - lost.top - lost.bottom} px of exact "
                           f"input gradient, less than the output stride {int(self.output_stride[1])}")

    def _backward_gather_statistics_hook(self, module, grad_in, grad_out):
        contaminated = grad_out[0].sum(1)[0] > 0
        self._module_stats[module]["grad_lost"] = valid_lost(contaminated, str(module))
        if grad_in[0] is None:
            return None
        spread = spread_backward(contaminated, module, grad_in[0].shape[2:])
        return (spread.to(grad_in[0].dtype).expand_as(grad_in[0]).contiguous(), *grad_in[1:])

    def forward(self, image, result_on_cpu=False):
        with gd.autocast(self.device, self.amp_dtype):
            return super().forward(image, result_on_cpu)

    def backward(self, image, grad):
        with _reforward_in(self.stream_module, self.amp_dtype):
            super().backward(image, grad)


@functools.cache
def _classes():
    StreamingConstructor, StreamingCNN, _ = _lightstream()

    class ExactStreamingCNN(_ExactStatistics, StreamingCNN):
        """lightstream's StreamingCNN with exact statistics on the module's device (module docstring)."""

    class KitConstructor(StreamingConstructor):
        """StreamingConstructor building ExactStreamingCNN (its layer swaps and weight restore kept)."""

        def create_streaming_model(self):
            return ExactStreamingCNN(self.model, tile_shape=(1, 3, self.tile_size, self.tile_size),
                                     verbose=False, copy_to_gpu=False, statistics_on_cpu=False,
                                     normalize_on_gpu=False, state_dict=self.tile_cache)

    return ExactStreamingCNN, KitConstructor


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval (running statistics) whatever model.train() says."""

    def train(self, mode: bool = True):
        return super().train(False)


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm in eval for good (FrozenBatchNorm2d: the class swapped in place, so the state dict is
    unchanged) with its affine not trained: what Streaming SGD can run (lightstream's
    freeze_normalization_layers does the same); GD matches it only frozen the same way (``gd-frozen-bn``)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.__class__ = FrozenBatchNorm2d
            m.eval()
            m.requires_grad_(False)


def frozen_bn_classifier(backbone: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """GD's model with every BatchNorm frozen: the GD row to set beside Streaming SGD's."""
    model = classifier_model(backbone, num_classes, weights)
    freeze_batchnorm(model)
    return model


def stream(trunk: nn.Module, tile_size: int):
    """`trunk` (an nn.Sequential of convs, pools and BatchNorm) streamed in tiles of tile_size², built by
    lightstream's StreamingConstructor with the exact statistics computed on the trunk's device."""
    _, KitConstructor = _classes()
    # BatchNorm kept during statistics: as Identity, a torchvision residual's in-place add would write into
    # a conv output that a statistics hook holds.
    # statistics_on_cpu=True only keeps the constructor from moving the trunk to CUDA (False does);
    # ExactStreamingCNN computes them wherever the trunk is. normalize_on_gpu=False: images come normalised.
    constructor = KitConstructor(trunk, tile_size, verbose=False, statistics_on_cpu=True, normalize_on_gpu=False,
                                 add_keep_modules=[nn.modules.batchnorm._BatchNorm])
    with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints each step
        return constructor.prepare_streaming_model()


class StreamingClassifier(nn.Module):
    """A classifier as Streaming SGD trains it: `.streamed` (the trunk, in tiles of tile_size²), `.head`
    (the trunk's output map → logits) with autograd; the trunk's BatchNorm frozen (freeze_batchnorm)."""

    def __init__(self, trunk: nn.Module, head: nn.Module, tile_size: int):
        super().__init__()
        freeze_batchnorm(trunk)
        self.tile_size = tile_size
        self.head = head
        self.streamed = stream(trunk, tile_size)

    @property
    def trunk(self) -> nn.Module:
        """The pretrained part (models.trunk_of): the streamed convs and the frozen BatchNorm."""
        return self.streamed.stream_module

    def features(self, images: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The trunk's output map of each image, streamed one image at a time, without autograd."""
        _follow_module(self.streamed, amp_dtype)
        with torch.no_grad():
            return torch.cat([self.streamed(image[None]) for image in images])

    def backward_trunk(self, images: torch.Tensor, map_grad: torch.Tensor) -> None:
        """Accumulate the trunk's parameter gradients for the output maps' gradient, an image at a time."""
        for image, grad in zip(images, map_grad):
            self.streamed.backward(image[None], grad[None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _follow_module(streamed, amp_dtype: torch.dtype | None) -> None:
    """lightstream keeps the device and dtype it was built with; a model moved since (.to(cuda)) moves it."""
    weight = next(streamed.stream_module.parameters())
    streamed.device, streamed.dtype, streamed.amp_dtype = weight.device, weight.dtype, amp_dtype


def build(backbone: str, num_classes: int, image_size: int, weights: str | None = None,
          tile_size: int | None = None) -> StreamingClassifier:
    """GD's torchvision classifier (``classifier_model``) split into the streamed trunk and a head of
    global pool → flatten → its classifier (as torchvision's forward), in tiles of `tile_size` (default:
    ``tile_for``)."""
    tile_size = tile_size or tile_for(backbone, image_size)
    check_tile(backbone, tile_size)
    model = classifier_model(backbone, num_classes, weights)
    classifier = model.fc if backbone == "resnet50" else model.classifier
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier)
    return StreamingClassifier(backbone_of(backbone).trunk(model), head, tile_size)


def train_batch(model: StreamingClassifier, images: torch.Tensor, labels: torch.Tensor,
                optimizer: torch.optim.Optimizer, *, amp_dtype: torch.dtype | None = None,
                scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, int]:
    """One Streaming SGD step: streamed forward of the trunk, the head with autograd, the output maps'
    gradient streamed back through the trunk, one optimizer step. (detached loss, optimizer steps)."""
    maps = model.features(images, amp_dtype).requires_grad_()
    with gd.autocast(images.device, amp_dtype):
        loss = F.cross_entropy(model.head(maps), labels)
    gd.backward(loss, scaler)
    model.backward_trunk(images, maps.grad)
    gd.optimizer_step(optimizer, scaler)
    return loss.detach(), 1


@torch.no_grad()
def predict(model: StreamingClassifier, images: torch.Tensor, *, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    maps = model.features(images, amp_dtype)
    with gd.autocast(images.device, amp_dtype):
        return model.head(maps).float()
