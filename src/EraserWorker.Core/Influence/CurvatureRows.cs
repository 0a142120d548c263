using System.Runtime.InteropServices;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.GradientCaches;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence;

/// <summary>
/// The cache's curvature rows C (n × P) held on the compute device, plus what is derived from them once and
/// reused by every solve: row norms, column sums of squares (CG's preconditioner) and, on first need, the
/// full Gram C Cᵀ in float64 (Woodbury). Owns its tensors; they live outside any dispose scope.
/// </summary>
internal sealed class CurvatureRows : IDisposable
{
    private readonly Tensor _rows;
    private Tensor? _gram;
    private Tensor? _columnSquares;

    private CurvatureRows(Tensor rows, Tensor rowSquares)
    {
        _rows = rows;
        RowSquares = rowSquares;
    }

    public Tensor Rows => _rows;

    /// <summary>‖cᵢ‖² for every row, float64.</summary>
    public Tensor RowSquares { get; }

    public long Count => _rows.shape[0];

    public long Parameters => _rows.shape[1];

    public ScalarType DType => _rows.dtype;

    public Device Device => _rows.device;

    public bool HasGram => _gram is not null;

    public long BytesHeld => _rows.NumberOfElements * _rows.ElementSize + (_gram?.NumberOfElements ?? 0) * 8;

    /// <summary>Streams the curvature rows (or the gradients, when the cache has none) into device memory.</summary>
    public static CurvatureRows Load(GradientCache cache, ComputeOptions options, Device device,
        IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        long n = cache.RowCount, p = cache.ParameterCount;
        var dtype = ComputeDevice.ScalarType(options.Precision);
        // Bound the staging buffer to ~128 MB per reader whatever the chunk option says.
        int rowsPerChunk = (int)Math.Max(1, Math.Min(options.RowsPerChunk, (32L << 20) / Math.Max(1, p)));
        var rows = torch.empty(n, p, dtype: dtype, device: device).DetachFromDisposeScope();
        Tensor? rowSquares = null;
        try
        {
            var chunks = new List<(int First, int Count)>();
            for (int first = 0; first < n; first += rowsPerChunk)
                chunks.Add((first, (int)Math.Min(rowsPerChunk, n - first)));
            long done = 0;
            bool direct = device.type == DeviceType.CPU && dtype == ScalarType.Float32;
            int next = -1;
            // Two readers overlap file reads and dtype conversion (both run in GradientCache.ReadRows); each owns
            // one staging buffer at most, so the peak stays at the rows plus two chunks.
            var readers = Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
            {
                var buffer = direct ? [] : new float[rowsPerChunk * p];
                for (int i = Interlocked.Increment(ref next); i < chunks.Count; i = Interlocked.Increment(ref next))
                {
                    cancellation.ThrowIfCancellationRequested();
                    var chunk = chunks[i];
                    if (direct)
                    {
                        // Read straight into the tensor's memory: no staging copy.
                        using var view = rows.narrow(0, chunk.First, chunk.Count);
                        cache.ReadRows(CacheMatrix.Curvature, chunk.First, chunk.Count, MemoryMarshal.Cast<byte, float>(view.bytes));
                    }
                    else
                    {
                        var span = buffer.AsSpan(0, (int)(chunk.Count * p));
                        cache.ReadRows(CacheMatrix.Curvature, chunk.First, chunk.Count, span);
                        using var scope = torch.NewDisposeScope();
                        var staged = torch.tensor(buffer, [rowsPerChunk, p]).narrow(0, 0, chunk.Count);
                        rows.narrow(0, chunk.First, chunk.Count).copy_(staged.to(dtype, device));
                    }
                    progress?.Report(new EngineProgress("load", Interlocked.Add(ref done, chunk.Count), n));
                }
            }, cancellation)).ToArray();
            // WhenAll(...).GetResult() rethrows the first failure itself (e.g. a non-finite row), not an AggregateException.
            Task.WhenAll(readers).GetAwaiter().GetResult();

            rowSquares = torch.empty(n, dtype: ScalarType.Float64, device: device).DetachFromDisposeScope();
            foreach (var (first, count) in chunks)
            {
                // One scope per chunk: the squared block is as large as the chunk and must not pile up.
                using var scope = torch.NewDisposeScope();
                var block = rows.narrow(0, first, count);
                rowSquares.narrow(0, first, count).copy_((block * block).sum(1, type: ScalarType.Float64));
            }
            return new CurvatureRows(rows, rowSquares);
        }
        catch
        {
            rows.Dispose();
            rowSquares?.Dispose();
            throw;
        }
    }

    /// <summary>C Cᵀ in float64, computed once: column panels multiplied in the compute dtype (one BLAS call per
    /// block pair, only the upper block triangle) and accumulated in float64.</summary>
    public Tensor Gram(IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        if (_gram is not null)
            return _gram;
        long n = Count, p = Parameters;
        var gram = torch.zeros(n, n, dtype: ScalarType.Float64, device: Device).DetachFromDisposeScope();
        try
        {
            long panel = Math.Clamp((16L << 20) / Math.Max(1, n), 256, 16384);
            long block = Math.Min(n, 768);
            var blocks = new List<(long Start, long Size)>();
            for (long s = 0; s < n; s += block)
                blocks.Add((s, Math.Min(block, n - s)));
            for (long c0 = 0; c0 < p; c0 += panel)
            {
                cancellation.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                var cols = _rows.narrow(1, c0, Math.Min(panel, p - c0)).contiguous();
                for (int i = 0; i < blocks.Count; i++)
                {
                    var left = cols.narrow(0, blocks[i].Start, blocks[i].Size);
                    for (int j = i; j < blocks.Count; j++)
                    {
                        var right = cols.narrow(0, blocks[j].Start, blocks[j].Size);
                        gram.narrow(0, blocks[i].Start, blocks[i].Size).narrow(1, blocks[j].Start, blocks[j].Size)
                            .AddInPlace(left.matmul(right.t()).to(ScalarType.Float64));
                    }
                }
                progress?.Report(new EngineProgress("gram", Math.Min(p, c0 + panel), p));
            }
            using (var scope = torch.NewDisposeScope())
            {
                // Mirror the upper block triangle into the lower one.
                for (int i = 0; i < blocks.Count; i++)
                    for (int j = i + 1; j < blocks.Count; j++)
                        gram.narrow(0, blocks[j].Start, blocks[j].Size).narrow(1, blocks[i].Start, blocks[i].Size)
                            .copy_(gram.narrow(0, blocks[i].Start, blocks[i].Size).narrow(1, blocks[j].Start, blocks[j].Size).t());
            }
            _gram = gram;
            return gram;
        }
        catch
        {
            gram.Dispose();
            throw;
        }
    }

    /// <summary>Σᵢ cᵢ² per parameter over all rows, float64 (the diagonal of CᵀC).</summary>
    public Tensor ColumnSquares()
    {
        if (_columnSquares is not null)
            return _columnSquares;
        var sums = torch.zeros(Parameters, dtype: ScalarType.Float64, device: Device).DetachFromDisposeScope();
        long step = Math.Max(1, (16L << 20) / Math.Max(1, Parameters));
        for (long first = 0; first < Count; first += step)
        {
            using var scope = torch.NewDisposeScope();
            var block = _rows.narrow(0, first, Math.Min(step, Count - first));
            sums.AddInPlace((block * block).sum(0, type: ScalarType.Float64));
        }
        _columnSquares = sums;
        return sums;
    }

    public void Dispose()
    {
        _rows.Dispose();
        RowSquares.Dispose();
        _gram?.Dispose();
        _columnSquares?.Dispose();
    }
}
