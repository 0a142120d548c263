using System.Buffers;

namespace EraserWorker.Core.Formats.Adapters;

/// <summary>A <see cref="Memory{T}"/> over memory the caller keeps pinned (a <c>fixed</c> span) for the manager's
/// whole use: lets span data flow into Memory-based APIs without a copy.</summary>
internal sealed unsafe class PointerMemoryManager<T>(T* pointer, int length) : MemoryManager<T>
    where T : unmanaged
{
    public override Span<T> GetSpan() => new(pointer, length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }
}
