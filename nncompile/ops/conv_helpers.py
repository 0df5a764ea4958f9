"""The helpers that conv2d, the pools and channel_sum's emitted code calls, written once for
numpy (``Backend.retarget`` moves them to CuPy): the careful numpy programmer's forms that
:mod:`.conv` declares its ops with.

At stride 1 im2col copies the padded image once into a flat buffer where each kernel
offset's windows are one long run (:data:`WIDE_COLUMNS`), so the copy into the columns a
conv multiplies with its filters (one batched GEMM) has no rows of OW; elsewhere the columns
are a strided view of the image (:data:`WINDOWS`). Both backward products are GEMMs too.
Images of at most 2*KH*KW pixels take columns copied channels last instead
(:data:`CHANNELS_LAST_COLUMNS`), and their input gradient the conv as one matrix
(:data:`TAPS`) where that is no larger than the columns; col2im and the pools loop over the
kernel's offsets (9 for a 3x3 kernel), never over pixels.
"""

WINDOWS = '''def _windows(x, kernel, stride, padding, dilation, fill=0.0):
    """im2col's windows of x [N, C, H, W] as a strided view [N, C, KH, KW, OH, OW] of x
    (padded with fill first where there is padding): [:, :, i, j] is kernel offset (i, j)
    of every output pixel. No copy is made until the view is reshaped."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph or pw:
        padded = np.full((x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), fill, dtype=x.dtype)
        padded[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
        x = padded
    n, c, h, w = x.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = x.strides
    return np.lib.stride_tricks.as_strided(x, (n, c, kh, kw, oh, ow), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))'''

COL2IM = '''def _col2im(cols, size, stride, padding, dilation, out=None):
    """The transpose of _windows: each window's entries cols [N, C, KH, KW, OH, OW] added back
    onto the pixels it read, one strided add per kernel offset; the padding is cut off."""
    n, c, kh, kw, oh, ow = cols.shape
    (h, w), (sh, sw), (ph, pw), (dh, dw) = size, stride, padding, dilation
    direct = out is not None and not (ph or pw)
    image = out if direct else np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    image[...] = 0
    for i in range(kh):
        for j in range(kw):
            rows, columns = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            image[:, :, rows, columns] += cols[:, :, i, j]
    if direct:
        return out
    image = image[:, :, ph:ph + h, pw:pw + w]
    if out is None:
        return image
    out[...] = image
    return out'''

WIDE_COLUMNS = '''def _wide_columns(x, kernel, padding, dilation, channels_first=False):
    """im2col at stride 1 as long contiguous runs: x padded into one flat buffer (with a tail
    of dilation*(KW-1) zeros), where a kernel offset's windows over an image are one run of
    OH*W' entries, W' the padded width. The columns [N, C*KH*KW, OH*W'] (or channels first,
    [C*KH*KW, N*OH*W']) hold every output row at the padded width: its last W' - OW entries
    are junk, which the caller drops (forward) or multiplies by zeros (weight gradient).
    Copying runs of OH*W' is several times faster than a strided view's rows of OW."""
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    n, c, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, plane = hp - dh * (kh - 1), hp * wp
    flat = np.zeros(n * c * plane + dw * (kw - 1), dtype=x.dtype)
    flat[:n * c * plane].reshape(n, c, hp, wp)[:, :, ph:ph + h, pw:pw + w] = x
    s = flat.itemsize
    if channels_first:
        runs = np.lib.stride_tricks.as_strided(flat, (c, kh, kw, n, oh * wp), (plane * s, dh * wp * s, dw * s, c * plane * s, s))
        return runs.reshape(c * kh * kw, n * oh * wp)
    runs = np.lib.stride_tricks.as_strided(flat, (n, c, kh, kw, oh * wp), (c * plane * s, plane * s, dh * wp * s, dw * s, s))
    return runs.reshape(n, c * kh * kw, oh * wp)'''

WIDE_COL2IM = '''def _wide_col2im(cols, size, padding, dilation, out=None):
    """The transpose of _wide_columns: cols [N, C, KH, KW, OH*W'] (zeros in their junk) added
    back onto the padded image as long runs, one add per kernel offset, the padding cut off.
    Each plane is followed by a gap that takes the runs' overhang, so no two runs overlap."""
    n, c, kh, kw, m = cols.shape
    (h, w), (ph, pw), (dh, dw) = size, padding, dilation
    hp, wp = h + 2 * ph, w + 2 * pw
    plane = hp * wp + dw * (kw - 1)
    flat = np.zeros(n * c * plane, dtype=cols.dtype)
    s = flat.itemsize
    for i in range(kh):
        for j in range(kw):
            runs = np.lib.stride_tricks.as_strided(flat[i * dh * wp + j * dw:], (n, c, m), (c * plane * s, plane * s, s))
            runs += cols[:, :, i, j]
    image = flat.reshape(n, c, plane)[:, :, :hp * wp].reshape(n, c, hp, wp)[:, :, ph:ph + h, pw:pw + w]
    if out is None:
        return image.copy()
    out[...] = image
    return out'''

CONV2D = '''def _conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, out=None):
    """The cross-correlation of x [N, C, H, W] with filters w [F, C/groups, KH, KW] (plus the
    bias b [F]): im2col's columns [N, groups, C/groups*KH*KW, OH*OW] times each group's
    filters as a matrix, one batched GEMM. At stride 1, where a column is longer than a
    group's output channels, the columns are _wide_columns' and the junk at the end of each
    row is dropped in the copy into the NCHW result (the bias added in the same pass);
    otherwise they are a strided view's and the GEMM writes the result directly: with few
    input channels (a first layer's 1 or 3) copying the result costs more than the columns.
    An image of at most 2*KH*KW pixels (one group) takes _small_conv2d's channels-last columns."""
    f, cg, kh, kw = w.shape
    if groups == 1 and x.shape[2] * x.shape[3] <= 2 * kh * kw:
        return _small_conv2d(x, w, b, stride, padding, dilation, out)
    filters = w.reshape(groups, f // groups, cg * kh * kw)
    if stride == (1, 1) and cg * kh * kw > f // groups:
        cols = _wide_columns(x, (kh, kw), padding, dilation)
        n, _, m = cols.shape
        wp = x.shape[3] + 2 * padding[1]
        wide = np.matmul(filters, cols.reshape(n, groups, cg * kh * kw, m)).reshape(n, f, m // wp, wp)
        rows = wide[:, :, :, :wp - dilation[1] * (kw - 1)]
        if out is None:
            out = np.empty(rows.shape, dtype=x.dtype)
        if b is None:
            out[...] = rows
        else:
            np.add(rows, b.reshape(f, 1, 1), out=out)
        return out
    windows = _windows(x, (kh, kw), stride, padding, dilation)
    n, _, _, _, oh, ow = windows.shape
    cols = windows.reshape(n, groups, cg * kh * kw, oh * ow)
    if out is None:
        out = np.empty((n, f, oh, ow), dtype=x.dtype)
    np.matmul(filters, cols, out=out.reshape(n, groups, f // groups, oh * ow))
    if b is not None:
        out += b.reshape(f, 1, 1)
    return out'''

TAPS = '''_TAP_INDEX = {}


def _taps(size, kernel, stride, padding, dilation):
    """Where a conv2d's filter taps meet an image of size (H, W): for each (output pixel,
    tap) whose input pixel is inside the image, not padding, the output pixel's index in
    OH*OW, the input pixel's in H*W and the tap's in KH*KW. Worked out once per geometry."""
    key = (size, kernel, stride, padding, dilation)
    if key not in _TAP_INDEX:
        (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = key
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        r, s, i, j = np.meshgrid(np.arange(oh), np.arange(ow), np.arange(kh), np.arange(kw), indexing="ij")
        rows, cols = r * sh + i * dh - ph, s * sw + j * dw - pw
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        _TAP_INDEX[key] = (r * ow + s)[inside], (rows * w + cols)[inside], (i * kw + j)[inside]
    return _TAP_INDEX[key]'''

CHANNELS_LAST_COLUMNS = '''def _channels_last_columns(x, kernel, stride, padding, dilation):
    """im2col of x [N, C, H, W] channels last: [N, OH, OW, KH*KW*C], a row per output pixel,
    copied from x padded as [N, H', W', C]. A row's entries of one kernel row are then runs of
    KW*C (at dilation 1), long where there are many channels: the small images deep in a net."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    padded = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    padded[:, ph:ph + h, pw:pw + w] = x.transpose(0, 2, 3, 1)
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = padded.strides
    windows = np.lib.stride_tricks.as_strided(padded, (n, oh, ow, kh, kw, c), (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3))
    return windows.reshape(n, oh, ow, kh * kw * c)'''

SMALL_CONV2D = '''def _small_conv2d(x, w, b, stride, padding, dilation, out=None):
    """_conv2d of a small image (one group): its channels-last columns times the filters as
    [KH*KW*C, F], one GEMM whose rows are the output pixels, copied into the NCHW result
    (with the bias). Its columns copy runs of KW*C, where NCHW's are runs of at most OW."""
    f, _, kh, kw = w.shape
    cols = _channels_last_columns(x, (kh, kw), stride, padding, dilation)
    n, oh, ow, taps = cols.shape
    pixels = np.matmul(cols.reshape(-1, taps), w.transpose(2, 3, 1, 0).reshape(taps, f))
    image = pixels.reshape(n, oh, ow, f).transpose(0, 3, 1, 2)
    if out is None:
        out = np.empty((n, f, oh, ow), dtype=x.dtype)
    if b is None:
        out[...] = image
    else:
        np.add(image, b.reshape(f, 1, 1), out=out)
    return out'''

CONV2D_INPUT_GRAD = '''def _conv2d_input_grad(g, w, size, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, out=None):
    """d loss / d x of a conv2d. For an image of at most 2*KH*KW pixels (and one group) it is
    g [N, F*OH*OW] times the conv as one matrix [F*OH*OW, H*W*C], each filter tap placed
    where it meets its input pixel: at most twice the flops of the columns, and no columns,
    padding or junk (where the matrix is no larger than the columns: few filters, or a batch). At stride 1 with fewer channels than filters, each group's filters,
    transposed, times g widened to W' (zeros in its junk) are _wide_columns' gradient, which
    _wide_col2im adds back as long runs; with as many or more, it is the full correlation of
    g [N, F, OH, OW] with the filters flipped and transposed (im2col and one batched GEMM
    again): whichever columns are the smaller. Otherwise (and where a column is shorter than
    a group's filters, as in _conv2d: a first layer's) the columns' gradient, exact, is
    added back by col2im."""
    n, f, oh, ow = g.shape
    _, cg, kh, kw = w.shape
    if groups == 1 and size[0] * size[1] <= 2 * kh * kw and f * size[0] * size[1] <= n * kh * kw:
        outputs, inputs, taps = _taps(tuple(size), (kh, kw), stride, padding, dilation)
        unrolled = np.zeros((f, oh * ow, size[0] * size[1], cg), dtype=w.dtype)
        unrolled[:, outputs, inputs] = w.reshape(f, cg, kh * kw).transpose(0, 2, 1)[:, taps]
        pixels = np.matmul(g.reshape(n, f * oh * ow), unrolled.reshape(f * oh * ow, -1))
        image = pixels.reshape(n, size[0], size[1], cg).transpose(0, 3, 1, 2)
        if out is None:
            return np.ascontiguousarray(image)
        out[...] = image
        return out
    if stride == (1, 1) and cg * groups < f and cg * kh * kw > f // groups:
        wp = size[1] + 2 * padding[1]
        grads = np.zeros((n, f, oh, wp), dtype=g.dtype)
        grads[:, :, :, :ow] = g
        filters = w.reshape(groups, f // groups, cg * kh * kw).transpose(0, 2, 1)
        cols = np.matmul(filters, grads.reshape(n, groups, f // groups, oh * wp))
        return _wide_col2im(cols.reshape(n, groups * cg, kh, kw, oh * wp), size, padding, dilation, out)
    full = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    if stride == (1, 1) and cg * groups >= f and min(full) >= 0:
        flipped = w.reshape(groups, f // groups, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        return _conv2d(g, flipped.reshape(groups * cg, f // groups, kh, kw), None, (1, 1), full, dilation, groups, out)
    filters = w.reshape(groups, f // groups, cg * kh * kw).transpose(0, 2, 1)
    cols = np.matmul(filters, g.reshape(n, groups, f // groups, oh * ow))
    return _col2im(cols.reshape(n, groups * cg, kh, kw, oh, ow), size, stride, padding, dilation, out)'''

CONV2D_WEIGHT_GRAD = '''def _conv2d_weight_grad(x, g, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, out=None):
    """d loss / d w of a conv2d: g [N, F, OH, OW] times im2col's columns of x, summed over the
    batch and the output pixels: one GEMM per group over N*OH*OW (the columns laid out so).
    For an image of at most 2*KH*KW pixels (and one group) the columns are channels last, as
    in _small_conv2d; at stride 1, where a column is longer than a group's filters (as in
    _conv2d), they are _wide_columns' (channels first) and g is widened to match, zeros
    against their junk, so an inf pixel in x (whose conv, and so the loss, is not finite
    either) makes NaN the gradient of taps that never read it too."""
    n, f, oh, ow = g.shape
    c, (kh, kw) = x.shape[1], kernel
    if groups == 1 and x.shape[2] * x.shape[3] <= 2 * kh * kw:   # as in _conv2d
        cols = _channels_last_columns(x, kernel, stride, padding, dilation)
        per_tap = np.matmul(g.transpose(1, 0, 2, 3).reshape(f, n * oh * ow), cols.reshape(n * oh * ow, -1))
        if out is None:
            out = np.empty((f, c, kh, kw), dtype=x.dtype)
        out[...] = per_tap.reshape(f, kh, kw, c).transpose(0, 3, 1, 2)
        return out
    if stride == (1, 1) and c // groups * kh * kw > f // groups:   # as in _conv2d
        cols = _wide_columns(x, kernel, padding, dilation, channels_first=True)
        wp = x.shape[3] + 2 * padding[1]
        grads = np.zeros((f, n, oh, wp), dtype=g.dtype)
        grads[:, :, :, :ow] = g.transpose(1, 0, 2, 3)
        cols = cols.reshape(groups, c // groups * kh * kw, n * oh * wp)
        grads = grads.reshape(groups, f // groups, n * oh * wp)
    else:
        windows = _windows(x, kernel, stride, padding, dilation)
        cols = windows.transpose(1, 2, 3, 0, 4, 5).reshape(groups, c // groups * kh * kw, n * oh * ow)
        grads = g.transpose(1, 0, 2, 3).reshape(groups, f // groups, n * oh * ow)
    if out is None:
        out = np.empty((f, c // groups, kh, kw), dtype=x.dtype)
    # columns times g's rows, then transposed: OpenBLAS is 10-30% faster this way round
    transposed = np.matmul(cols, grads.transpose(0, 2, 1))
    out.reshape(groups, f // groups, c // groups * kh * kw)[...] = transposed.transpose(0, 2, 1)
    return out'''

FIRST_OFFSET = '''def _first_offset(windows, out=None):
    """Kernel offset (0, 0) of every window, copied (into out, where given): a pool's start."""
    if out is None:
        return windows[:, :, 0, 0].copy()
    out[...] = windows[:, :, 0, 0]
    return out'''

MAX_POOL2D = '''def _max_pool2d(x, kernel, stride, padding=(0, 0), out=None):
    """The max of each window: a running maximum over the kernel's offsets (padding is -inf).
    Windows that tile a C-order image take the max across each row's KW neighbours first, as
    long 1-d runs, then across the KH rows: a strided view's rows of OW are several times slower."""
    if _tiles(x, kernel, stride, padding) and x.flags.c_contiguous and (out is None or out.flags.c_contiguous):
        return _tiled_max_pool2d(x, kernel, out)
    windows = _windows(x, kernel, stride, padding, (1, 1), fill=-np.inf)
    out = _first_offset(windows, out)
    for k in range(1, kernel[0] * kernel[1]):
        np.maximum(out, windows[:, :, k // kernel[1], k % kernel[1]], out=out)
    return out'''

TILED_MAX_POOL2D = '''def _tiles(x, kernel, stride, padding):
    """Whether the windows tile the image exactly: stride the kernel, no padding, no remainder."""
    return tuple(stride) == tuple(kernel) and tuple(padding) == (0, 0) and x.shape[2] % kernel[0] == 0 and x.shape[3] % kernel[1] == 0


def _tiled_max_pool2d(x, kernel, out=None):
    """_max_pool2d of windows that tile the C-order image x: the max over each row's KW
    neighbours (x's columns as [-1, KW]), then over each window's KH rows."""
    (kh, kw), (n, c, h, w) = kernel, x.shape
    neighbours = x.reshape(-1, kw)
    across = neighbours[:, 0].copy()
    for j in range(1, kw):
        np.maximum(across, neighbours[:, j], out=across)
    rows = across.reshape(n * c * (h // kh), kh, w // kw)
    if out is None:
        out = np.empty((n, c, h // kh, w // kw), dtype=x.dtype)
    best = out.reshape(rows.shape[0], rows.shape[2])
    best[...] = rows[:, 0]
    for i in range(1, kh):
        np.maximum(best, rows[:, i], out=best)
    return out'''

MAX_MASKS = '''def _max_masks(x, kernel, stride, padding):
    """For each kernel offset, where it holds its window's max: the first of a tie only, as
    PyTorch routes it. The offsets are copied once, contiguous [KH*KW, N, C, OH, OW], so the
    comparisons run over whole arrays rather than strided rows of OW; no argmax over a tiny
    axis."""
    windows = _windows(x, kernel, stride, padding, (1, 1), fill=-np.inf)
    n, c, kh, kw, oh, ow = windows.shape
    offsets = np.ascontiguousarray(windows.transpose(2, 3, 0, 1, 4, 5)).reshape(kh * kw, n, c, oh, ow)
    masks = offsets == offsets.max(axis=0)
    taken = masks[0].copy()
    for mask in masks[1:]:
        np.greater(mask, taken, out=mask)   # and not taken before
        taken |= mask
    return masks'''

MAX_POOL2D_GRAD = '''def _max_pool2d_grad(g, x, kernel, stride, padding=(0, 0), out=None):
    """d loss / d x of a max pool: each window's g goes to its max. Windows that tile the
    image exactly write their share straight into it, one strided write per kernel offset;
    otherwise the shares are added back by col2im."""
    masks = _max_masks(x, kernel, stride, padding)
    n, c, oh, ow = g.shape
    kh, kw = kernel
    if stride == kernel and padding == (0, 0) and x.shape[2:] == (oh * kh, ow * kw):
        image = np.empty(x.shape, dtype=g.dtype) if out is None else out
        for k, mask in enumerate(masks):
            np.multiply(g, mask, out=image[:, :, k // kw::kh, k % kw::kw])
        return image
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=g.dtype)
    for k, mask in enumerate(masks):
        np.multiply(g, mask, out=cols[:, :, k // kw, k % kw])
    return _col2im(cols, x.shape[2:], stride, padding, (1, 1), out)'''

MAX_POOL2D_SELECT = '''def _max_pool2d_select(u, x, kernel, stride, padding=(0, 0)):
    """u's entry at each window's max of x: the transpose of _max_pool2d_grad."""
    windows = _windows(u, kernel, stride, padding, (1, 1))
    masks = _max_masks(x, kernel, stride, padding)
    out = windows[:, :, 0, 0] * masks[0]
    for k, mask in enumerate(masks[1:], 1):
        out += windows[:, :, k // kernel[1], k % kernel[1]] * mask
    return out'''

AVG_POOL2D = '''def _avg_pool2d(x, kernel, stride, padding=(0, 0), out=None):
    """The mean of each window, padding counted as zeros (PyTorch's count_include_pad)."""
    windows = _windows(x, kernel, stride, padding, (1, 1))
    out = _first_offset(windows, out)
    for k in range(1, kernel[0] * kernel[1]):
        out += windows[:, :, k // kernel[1], k % kernel[1]]
    out *= 1.0 / (kernel[0] * kernel[1])
    return out'''

AVG_POOL2D_GRAD = '''def _avg_pool2d_grad(g, size, kernel, stride, padding=(0, 0), out=None):
    """d loss / d x of an average pool: g / (KH*KW) spread over each window."""
    n, c, oh, ow = g.shape
    share = g * (1.0 / (kernel[0] * kernel[1]))
    cols = np.broadcast_to(share[:, :, None, None], (n, c, kernel[0], kernel[1], oh, ow))
    return _col2im(cols, size, stride, padding, (1, 1), out)'''


CHANNEL_SUMS = '''def _channel_sums(x, mean=False, negate=False, out=None):
    """Each channel's sum (or mean; negated, where asked) of x [N, C, H, W] over the batch and
    the pixels, as two matrix-vector products: several times faster than add.reduce over
    three of the four axes. out may be any array of C entries (a [C, 1, 1] buffer, say)."""
    n, c, h, w = x.shape
    per_image = np.matmul(x.reshape(n * c, h * w), np.ones(h * w, dtype=x.dtype)).reshape(n, c)
    weights = np.full(n, (-1.0 if negate else 1.0) / (n * h * w if mean else 1), dtype=x.dtype)
    if out is None:
        return np.matmul(weights, per_image)
    np.matmul(weights, per_image, out=out.reshape(c))
    return out'''
