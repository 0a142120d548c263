namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// Bytes an engine holds for its rows: resident rows, the Gram, read buffers and Gram panels, counted when they are
/// allocated and released, with the peak. What the memory budget is checked against (thread-safe).
/// </summary>
internal sealed class MemoryLedger
{
    private long _held;
    private long _peak;

    public long Held => Interlocked.Read(ref _held);

    public long Peak => Interlocked.Read(ref _peak);

    public void Add(long bytes)
    {
        long now = Interlocked.Add(ref _held, bytes);
        long peak;
        while (now > (peak = Interlocked.Read(ref _peak)) && Interlocked.CompareExchange(ref _peak, now, peak) != peak)
        {
        }
    }

    public void Release(long bytes) => Interlocked.Add(ref _held, -bytes);

    /// <summary>Counts <paramref name="bytes"/> until the returned handle is disposed.</summary>
    public Lease Hold(long bytes)
    {
        Add(bytes);
        return new Lease(this, bytes);
    }

    public readonly struct Lease(MemoryLedger ledger, long bytes) : IDisposable
    {
        public void Dispose() => ledger.Release(bytes);
    }
}
