namespace EraserWorker.Components.Warm;

/// <summary>Something kept loaded for one adapter, with a gate that is held while it is in use.</summary>
public interface IWarm : IDisposable
{
    string AdapterId { get; }

    SemaphoreSlim Gate { get; }
}

/// <summary>
/// A least-recently-used set of loaded items, one per adapter, of at most <paramref name="capacity"/>() items: a miss
/// loads (null: nothing to load), and the least recently used items beyond the capacity are released once the work
/// still using them (holding their <see cref="IWarm.Gate"/>) finishes. Shared by the warm engines and warm models.
/// </summary>
public sealed class WarmSet<T>(Func<int> capacity, Func<string, CancellationToken, Task<T?>> load, Action<T> released) : IDisposable
    where T : class, IWarm
{
    private readonly LinkedList<T> _recent = new();
    private readonly SemaphoreSlim _gate = new(1, 1);

    public int Count => _recent.Count;

    public async Task<T?> GetAsync(string adapterId, CancellationToken cancellation)
    {
        await _gate.WaitAsync(cancellation);
        try
        {
            var node = _recent.First;
            while (node is not null && node.Value.AdapterId != adapterId)
                node = node.Next;
            if (node is not null)
            {
                _recent.Remove(node);
                _recent.AddFirst(node);
                return node.Value;
            }
            var loaded = await load(adapterId, cancellation);
            if (loaded is null)
                return null;
            _recent.AddFirst(loaded);
            while (_recent.Count > capacity())
            {
                var evicted = _recent.Last!.Value;
                _recent.RemoveLast();
                await evicted.Gate.WaitAsync(cancellation); // the work still using it finishes first
                evicted.Dispose();
                released(evicted);
            }
            return loaded;
        }
        finally
        {
            _gate.Release();
        }
    }

    public void Dispose()
    {
        foreach (var item in _recent)
            item.Dispose();
        _recent.Clear();
        _gate.Dispose();
    }
}
