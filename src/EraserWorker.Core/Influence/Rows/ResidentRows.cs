using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// All rows on the compute device, read once at load straight into the tensor's memory in the storage dtype (no
/// staging copy or conversion on the CPU). Their digest is computed from memory when first asked for (only the Gram's
/// derived file needs it). Owns its tensor, outside any dispose scope.
/// </summary>
internal sealed class ResidentRows : RowSource
{
    private readonly Tensor _rows;

    private ResidentRows(GradientCache cache, RowPlan plan, Device device, MemoryLedger memory, Tensor rows)
        : base(cache, plan, device, memory)
    {
        _rows = rows;
    }

    public override ScalarType HoldType => _rows.dtype;

    public static ResidentRows Load(GradientCache cache, RowPlan plan, Device device, MemoryLedger memory,
        int rowsPerChunk, IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        int n = cache.RowCount;
        long p = cache.ParameterCount;
        var storage = ScalarTypeOf(cache.StorageDType);
        var hold = ScalarTypeOf(plan.HoldDType);
        // Chunks of at most 32 MB: each reader owns one, so the peak stays at the rows plus two chunks.
        int chunkRows = (int)Math.Max(1, Math.Min(rowsPerChunk, (32L << 20) / Math.Max(1, cache.RowBytes)));
        bool inPlace = device.type == DeviceType.CPU && hold == storage;
        var rows = torch.empty(n, p, dtype: hold, device: device).DetachFromDisposeScope();
        memory.Add(plan.RowBytes);
        try
        {
            var chunks = Ranges(n, chunkRows);
            long done = 0;
            int next = -1;
            // A few reads in flight keep the disk busy; in place on the CPU, else through a storage-dtype staging chunk
            // copied to the device (converting when the held dtype differs).
            var readers = Enumerable.Range(0, Readers).Select(_ => Task.Run(() =>
            {
                using var staging = inPlace ? null : torch.empty(chunkRows, p, dtype: storage);
                using var lease = memory.Hold(inPlace ? 0 : chunkRows * cache.RowBytes);
                for (int i = Interlocked.Increment(ref next); i < chunks.Count; i = Interlocked.Increment(ref next))
                {
                    cancellation.ThrowIfCancellationRequested();
                    var (first, count) = chunks[i];
                    using var target = (inPlace ? rows : staging!).narrow(0, inPlace ? first : 0, count);
                    cache.ReadRowsRaw(CacheMatrix.Curvature, first, count, target.bytes);
                    if (!inPlace)
                    {
                        using var slot = rows.narrow(0, first, count);
                        slot.copy_(target);
                    }
                    progress?.Report(new EngineProgress("load", Interlocked.Add(ref done, count), n));
                }
            }, cancellation)).ToArray();
            // WhenAll(...).GetResult() rethrows the first failure itself (e.g. a non-finite row), not an AggregateException.
            Task.WhenAll(readers).GetAwaiter().GetResult();
            var source = new ResidentRows(cache, plan, device, memory, rows);
            source.CountRead(n * cache.RowBytes);
            return source;
        }
        catch
        {
            rows.Dispose();
            memory.Release(plan.RowBytes);
            throw;
        }
    }

    /// <summary>Concurrent positioned reads while loading.</summary>
    private const int Readers = 4;

    public override string EnsureDigest(CancellationToken cancellation)
    {
        if (Digest is not null)
            return Digest;
        var digest = new RowsDigest(Count, Parameters, Cache.StorageDType);
        long rowBytes = Cache.RowBytes;
        // Hashed as stored: the storage dtype's bytes (a device copy is brought back row range by row range).
        Parallel.ForEach(Ranges(Count, Plan.BlockRows), range =>
        {
            cancellation.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var block = _rows.narrow(0, range.First, range.Count);
            if (block.dtype != StorageType || block.device_type != DeviceType.CPU)
                block = block.to(StorageType).cpu();
            var bytes = block.bytes;
            for (int r = 0; r < range.Count; r++)
                digest.Row(range.First + r, bytes.Slice((int)(r * rowBytes), (int)rowBytes));
        });
        return Digest = digest.Finish();
    }

    public override void ForEachBlock(Action<int, Tensor> visit, CancellationToken cancellation)
    {
        foreach (var (first, count) in Ranges(Count, Plan.BlockRows))
        {
            cancellation.ThrowIfCancellationRequested();
            using var block = _rows.narrow(0, first, count);
            visit(first, block);
        }
        CountPass();
    }

    public override void ForEachPanel(Action<long, Tensor> visit, CancellationToken cancellation)
    {
        for (long c0 = 0; c0 < Parameters; c0 += Plan.PanelColumns)
        {
            cancellation.ThrowIfCancellationRequested();
            using var panel = _rows.narrow(1, c0, Math.Min(Plan.PanelColumns, Parameters - c0));
            visit(c0, panel);
        }
        CountPass();
    }

    public override Tensor RowsAt(long[] rows)
    {
        using var index = torch.tensor(rows, device: Device);
        return _rows.index_select(0, index);
    }

    public override void Dispose()
    {
        _rows.Dispose();
        Memory.Release(Plan.RowBytes);
    }
}
