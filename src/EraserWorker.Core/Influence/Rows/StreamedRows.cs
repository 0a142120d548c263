using System.Collections.Concurrent;
using EraserWorker.Core.Formats.GradientCaches;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// Rows read from the cache files for every pass, never held: a reader task fills one of two block buffers
/// (storage dtype, CPU) while the products use the other, so reads overlap compute and at most two blocks exist.
/// The first complete pass also fingerprints the rows (<see cref="RowSource.Digest"/>). Column panels for the Gram
/// are read the same way, double-buffered, one positioned read per row segment.
/// </summary>
internal sealed class StreamedRows(GradientCache cache, RowPlan plan, Device device, MemoryLedger memory)
    : RowSource(cache, plan, device, memory)
{
    /// <summary>Concurrent positioned reads per block or panel: a few requests in flight keep a disk busy.</summary>
    private const int ReadParallelism = 4;

    public override ScalarType HoldType => StorageType;

    public override void ForEachBlock(Action<int, Tensor> visit, CancellationToken cancellation)
    {
        var ranges = Ranges(Count, Plan.BlockRows);
        var digest = Digest is null ? new RowsDigest(Count, Parameters, Cache.StorageDType) : null;
        long rowBytes = Cache.RowBytes;
        DoubleBuffered(ranges.Count, () => torch.empty(Plan.BlockRows, Parameters, dtype: StorageType), Plan.BlockRows * rowBytes,
            (index, buffer) =>
            {
                var (first, count) = ranges[index];
                using var target = buffer.narrow(0, 0, count);
                var bytes = target.bytes;
                // A few reads in flight: split the block's rows among them.
                int parts = Math.Min(ReadParallelism, count);
                Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = parts }, part =>
                {
                    int a = count * part / parts, b = count * (part + 1) / parts;
                    using var slice = buffer.narrow(0, a, b - a);
                    Cache.ReadRowsRaw(CacheMatrix.Curvature, first + a, b - a, slice.bytes);
                });
                if (digest is not null)
                    for (int r = 0; r < count; r++)
                        digest.Row(first + r, bytes.Slice((int)(r * rowBytes), (int)rowBytes));
                CountRead(count * rowBytes);
            },
            (index, buffer) =>
            {
                var (first, count) = ranges[index];
                using var block = buffer.narrow(0, 0, count);
                using var onDevice = Device.type == DeviceType.CPU ? null : block.to(Device);
                visit(first, onDevice ?? block);
            }, cancellation);
        if (digest is not null)
            Digest = digest.Finish();
        CountPass();
    }

    public override void ForEachPanel(Action<long, Tensor> visit, CancellationToken cancellation)
    {
        int width = Plan.ReadPanelColumns, n = Count;
        int panels = (int)((Parameters + width - 1) / width);
        int elementSize = Cache.ElementSize;
        var digest = Digest is null ? new RowsDigest(n, Parameters, Cache.StorageDType) : null;
        DoubleBuffered(panels, () => torch.empty(n, width, dtype: StorageType), (long)n * width * elementSize,
            (index, buffer) =>
            {
                long c0 = (long)index * width;
                int w = (int)Math.Min(width, Parameters - c0);
                using var target = Leading(buffer, n, w);
                Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = ReadParallelism }, row =>
                {
                    var segment = target.bytes.Slice(row * w * elementSize, w * elementSize);
                    Cache.ReadRowSegmentRaw(CacheMatrix.Curvature, row, c0, w, segment);
                    digest?.Segment(row, segment);
                });
                CountRead((long)n * w * elementSize);
            },
            (index, buffer) =>
            {
                long c0 = (long)index * width;
                int w = (int)Math.Min(width, Parameters - c0);
                using var panel = Leading(buffer, n, w);
                using var onDevice = Device.type == DeviceType.CPU ? null : panel.to(Device);
                visit(c0, onDevice ?? panel);
            }, cancellation);
        if (digest is not null)
        {
            digest.FinishSegments();
            Digest = digest.Finish();
        }
        CountPass();
    }

    public override Tensor RowsAt(long[] rows)
    {
        var picked = torch.empty(rows.Length, Parameters, dtype: StorageType);
        Parallel.For(0, rows.Length, new ParallelOptions { MaxDegreeOfParallelism = ReadParallelism }, i =>
        {
            using var slot = picked.narrow(0, i, 1);
            Cache.ReadRowsRaw(CacheMatrix.Curvature, checked((int)rows[i]), 1, slot.bytes);
        });
        CountRead(rows.Length * Cache.RowBytes);
        return Device.type == DeviceType.CPU ? picked : picked.to(Device);
    }

    public override void Dispose()
    {
    }

    /// <summary>The first rows × cols elements of a buffer's memory as a contiguous rows × cols tensor.</summary>
    private static Tensor Leading(Tensor buffer, long rows, long cols)
    {
        using var flat = buffer.view(-1);
        using var part = flat.narrow(0, 0, rows * cols);
        return part.view(rows, cols);
    }

    /// <summary>
    /// Runs <paramref name="fill"/> for items 0, 1, … on a reader task and <paramref name="use"/> for each filled item
    /// in order on the calling thread, with two buffers: item i + 1 is read while item i is used. Buffers are
    /// created for the pass and counted in the ledger while they exist. The first failure on either side stops both
    /// and is rethrown.
    /// </summary>
    private void DoubleBuffered(int items, Func<Tensor> create, long bufferBytes, Action<int, Tensor> fill, Action<int, Tensor> use,
        CancellationToken cancellation)
    {
        if (items == 0)
            return;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        int slots = Math.Min(2, items);
        var buffers = new Tensor[slots];
        using var lease = Memory.Hold(slots * bufferBytes);
        try
        {
            for (int s = 0; s < slots; s++)
                buffers[s] = create().DetachFromDisposeScope();
            using var free = new BlockingCollection<int>(slots);
            using var ready = new BlockingCollection<(int Item, int Slot)>(slots);
            for (int s = 0; s < slots; s++)
                free.Add(s);
            var reader = Task.Run(() =>
            {
                try
                {
                    for (int i = 0; i < items; i++)
                    {
                        int slot = free.Take(stop.Token);
                        fill(i, buffers[slot]);
                        ready.Add((i, slot), stop.Token);
                    }
                }
                finally
                {
                    ready.CompleteAdding();
                }
            }, stop.Token);
            try
            {
                foreach (var (item, slot) in ready.GetConsumingEnumerable(stop.Token))
                {
                    use(item, buffers[slot]);
                    free.Add(slot, stop.Token);
                }
            }
            catch
            {
                stop.Cancel();
                try
                {
                    reader.Wait(CancellationToken.None);
                }
                catch (AggregateException)
                {
                    // the consumer's failure is the one to report
                }
                throw;
            }
            // The reader's failure (a non-finite value, a truncated file), if any.
            reader.GetAwaiter().GetResult();
        }
        finally
        {
            foreach (var buffer in buffers)
                buffer?.Dispose();
        }
    }
}
