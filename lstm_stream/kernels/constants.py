"""Every tuning constant of the kernels and the backends, with why it has its value.

The jitted code reads some of these (PANEL_COLS, PANEL_ROWS, HEAD_CHAINS, CACHE_LINE_BYTES, CUDA_TILE_STREAMS):
Numba freezes a module global into the compiled code, so they are compile-time constants and must never be
changed at run time. The backends read theirs when a backend is built. The measurements behind the values are
in docs/benchmarks.md ("History of the kernel speed-ups").
"""

# ---- CPU kernels (kernels/cpu.py, kernels/panel.py, kernels/layout.py) ----------------------------------------
# Gate columns per micro-kernel panel: two 256-bit vectors of float32 (four of float64), so a panel's weights
# load as whole vectors; the CPU weight layout pads gate blocks and segments to multiples of it.
PANEL_COLS = 16
# Streams per full micro-kernel panel: 6 x 16 float32 sums are 12 ymm registers, which with 2 weight vectors
# and 1 broadcast fill the 16 registers of AVX2 without spilling.
PANEL_ROWS = 6
# Partial sums per head output: the lanes of one 256-bit float32 vector, so the head's multiply-adds do not
# wait on each other (panel.headdot's pairwise tree is written for exactly 8).
HEAD_CHAINS = 8
# Streams stepped together by the CPU kernel: each weight panel loaded into cache serves this many streams. A
# multiple of PANEL_ROWS, so a full tile leaves no smaller panel over; tiles of 30 to 48 measured the same
# (I=32, H=256), 60 was slower (the tile's scratch leaves L1/L2).
CPU_TILE_STREAMS = 30
# Gate columns per block of the CPU weight layout: the one-stream loop keeps a block's sums in L1. Gates up to
# 2 * CPU_BLOCK wide stay one block (at H=64 one block of 256 beat two of 128); the tiled micro-kernel does not
# care (blocks of 64, 128 and 256 measured the same).
CPU_BLOCK = 128
# Bytes per cache line on x86-64 and arm64: slabs and scratch rows start on one (vector loads that straddle
# lines made the same kernel up to ~25% slower from run to run); the prefetcher asks for one line at a time.
CACHE_LINE_BYTES = 64

# ---- CPU backend (backends/cpu.py) ------------------------------------------------------------------------
# A call goes to the worker threads when its serial work, in multiply-adds (rows x the sum over layers of
# 4H(I_l + P)), is at least this: waking a worker costs ~60 µs on an idle 2-core VM, and at I=8 H=64 256
# streams (4.7 M) ran 1.35x faster on 2 threads while 128 streams (2.4 M) ran 0.87x.
PARALLEL_MIN_MACS = 4_000_000
# The smallest piece a thread takes from the shared counter: whole tiles holding at least this many
# multiply-adds (~10 µs), so that taking one (an atomic operation on a cache line both cores use) stays
# well under 1% of it.
PIECE_MACS = 400_000
# Guided sharing: each take is 1 / (SHARES_PER_THREAD * threads) of what is left, so pieces start large (few
# takes) and shrink towards the end, and threads finish within about one small piece of each other.
SHARES_PER_THREAD = 2

# ---- CUDA kernels (kernels/cuda.py, kernels/cuda_wide.py) ----------------------------------------------------
# Streams one thread block steps together: each thread applies the four gate weights it loads to this many
# streams. A compile-time constant because their 4 x CUDA_TILE_STREAMS accumulators are a local array, which
# stays in registers only while small.
CUDA_TILE_STREAMS = 4

# ---- CUDA backend (backends/cuda.py, backends/cuda_launch.py) ----------------------------------------------
# Threads per block: enough warps to cover H units once, up to MAX_BLOCK_THREADS (more units then loop per
# thread, which keeps several blocks per SM); at least one warp.
MAX_BLOCK_THREADS = 256
MIN_BLOCK_THREADS = 32
WARP = 32  # threads per warp: block sizes are whole warps
# Shared memory a block may use without opting in (CUDA's portable limit); more needs a per-kernel opt-in.
DEFAULT_SHARED_BYTES = 48 * 1024
# Blocks per SM when the weights are staged in shared memory: each block stages its own copy, so fewer is
# cheaper, and 4 resident blocks already hide one block's synchronisations.
MAX_BLOCKS_PER_SM = 4
# Resident threads per SM (every GPU since Volta allows 2048): caps the blocks per SM.
THREADS_PER_SM = 2048
# Without staged weights, batches of fewer tiles than this many per SM take the wide path (kernels/
# cuda_wide.py): one block per tile would leave SMs idle.
WIDE_BELOW_TILES_PER_SM = 1
# Largest grid dimension y (and the cap used for 1-D grids of the wide path): CUDA's limit for y and z.
MAX_GRID_Y = 65535
# zero_slots_kernel's launch: 256 threads per block, at most 4096 blocks (grid-stride beyond): the few slots a
# step zeroes take one small launch.
ZERO_THREADS = 256
ZERO_MAX_BLOCKS = 4096
