namespace EraserWorker.Core.Formats.Safetensors;

/// <summary>One tensor of a safetensors file. <see cref="Begin"/> and <see cref="End"/> are byte offsets relative to
/// the start of the data section (<see cref="SafetensorsHeader.DataStart"/>), as in the file's <c>data_offsets</c>.</summary>
/// <remarks>Equality compares the shape element-wise.</remarks>
public sealed record SafetensorsEntry(string Name, string DType, IReadOnlyList<long> Shape, long Begin, long End)
{
    /// <summary>The shape (a private copy: later changes to the list passed in do not affect the entry).</summary>
    public IReadOnlyList<long> Shape { get; init; } = Shape.ToArray();

    /// <summary>Product of the dimensions (1 for a scalar, shape []).</summary>
    public long ElementCount => ShapeMath.ElementCount(Shape);

    /// <summary>Bytes per element of <see cref="DType"/>.</summary>
    public int ElementSize => DTypeConversion.ElementSize(DType);

    /// <summary><see cref="End"/> − <see cref="Begin"/>.</summary>
    public long ByteLength => End - Begin;

    public bool Equals(SafetensorsEntry? other) =>
        other is not null && Name == other.Name && DType == other.DType && Begin == other.Begin && End == other.End &&
        Shape.SequenceEqual(other.Shape);

    public override int GetHashCode() => HashCode.Combine(Name, DType, Begin, End, Shape.Count);

    public override string ToString() => $"{Name} {DType}[{string.Join(", ", Shape)}] @[{Begin}, {End})";
}

internal static class ShapeMath
{
    /// <summary>Product of the dimensions; throws <see cref="OverflowException"/> if it exceeds <see cref="long"/>.</summary>
    public static long ElementCount(IReadOnlyList<long> shape)
    {
        long count = 1;
        foreach (long d in shape)
            count = checked(count * d);
        return count;
    }

    public static string Format(IReadOnlyList<long> shape) => "[" + string.Join(", ", shape) + "]";
}
