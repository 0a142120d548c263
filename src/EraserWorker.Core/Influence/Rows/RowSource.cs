using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// The curvature rows C (n × P) of a cache — or its gradients when it has none (SPEC §1) — as the products see
/// them: passes over row blocks in row order, column panels for the Gram, and rows picked by index. Two
/// implementations: <see cref="ResidentRows"/> (all rows on the device) and <see cref="StreamedRows"/> (read from the
/// cache files for every pass, double-buffered). Blocks and panels are valid only during the visit.
/// </summary>
internal abstract class RowSource : IDisposable
{
    private int _passes;
    private long _bytesRead;

    protected RowSource(GradientCache cache, RowPlan plan, Device device, MemoryLedger memory)
    {
        Cache = cache;
        Plan = plan;
        Device = device;
        Memory = memory;
        StorageType = ScalarTypeOf(cache.StorageDType);
    }

    public GradientCache Cache { get; }

    public RowPlan Plan { get; }

    public Device Device { get; }

    public MemoryLedger Memory { get; }

    public int Count => Cache.RowCount;

    public long Parameters => Cache.ParameterCount;

    /// <summary>The scalar type of the stored rows.</summary>
    public ScalarType StorageType { get; }

    /// <summary>The scalar type of the blocks, panels and picked rows handed out.</summary>
    public abstract ScalarType HoldType { get; }

    /// <summary><see cref="RowsDigest"/> of the rows once a complete read has computed it, else null.</summary>
    public string? Digest { get; protected set; }

    /// <summary>Complete passes over all rows so far (blocks or panels).</summary>
    public int Passes => Volatile.Read(ref _passes);

    /// <summary>Bytes read from the cache files so far.</summary>
    public long BytesRead => Interlocked.Read(ref _bytesRead);

    /// <summary>Visits all rows in order as (first row, contiguous block count × P in <see cref="HoldType"/> on the device).</summary>
    public abstract void ForEachBlock(Action<int, Tensor> visit, CancellationToken cancellation);

    /// <summary>Visits all columns in order as (first column, panel n × w in <see cref="HoldType"/> on the device, possibly strided).</summary>
    public abstract void ForEachPanel(Action<long, Tensor> visit, CancellationToken cancellation);

    /// <summary>The rows at <paramref name="rows"/> as a new k × P tensor on the device (caller's dispose scope).</summary>
    public abstract Tensor RowsAt(long[] rows);

    /// <summary>The digest, reading the rows once if no complete read has computed it yet.</summary>
    public virtual string EnsureDigest(CancellationToken cancellation)
    {
        if (Digest is null)
            ForEachBlock((_, _) => { }, cancellation);
        return Digest ?? throw new InvalidOperationException("A complete pass did not compute the rows' digest.");
    }

    protected void CountPass() => Interlocked.Increment(ref _passes);

    protected void CountRead(long bytes) => Interlocked.Add(ref _bytesRead, bytes);

    public abstract void Dispose();

    public static ScalarType ScalarTypeOf(string dtype) => dtype switch
    {
        DTypeConversion.F32 => ScalarType.Float32,
        DTypeConversion.F16 => ScalarType.Float16,
        DTypeConversion.BF16 => ScalarType.BFloat16,
        DTypeConversion.F64 => ScalarType.Float64,
        _ => throw new ArgumentException($"No scalar type for dtype '{dtype}'.", nameof(dtype)),
    };

    /// <summary>Row ranges of at most <paramref name="rows"/> rows covering [0, n).</summary>
    protected static List<(int First, int Count)> Ranges(int n, int rows)
    {
        var ranges = new List<(int, int)>();
        for (int first = 0; first < n; first += rows)
            ranges.Add((first, Math.Min(rows, n - first)));
        return ranges;
    }
}
