using EraserWorker.Core.Formats.Safetensors;

namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>
/// One adapter tensor that is part of θ: its key in <c>adapter_model.safetensors</c> and its shape. The gradient
/// cache's <c>parameters</c> list defines θ's order (SPEC §1): θ is the row-major concatenation of these tensors in
/// list order, not in the adapter file's order.
/// </summary>
/// <remarks>Every dimension must be ≥ 1 (a shape [] is a scalar). Equality compares the shape element-wise.</remarks>
public sealed record ParameterSpec(string Name, IReadOnlyList<long> Shape)
{
    public string Name { get; init; } = !string.IsNullOrEmpty(Name)
        ? Name
        : throw new ArgumentException("A parameter needs a non-empty name.", nameof(Name));

    /// <summary>The shape (a private copy).</summary>
    public IReadOnlyList<long> Shape { get; init; } = CheckShape(Name, Shape);

    /// <summary>Number of elements: the product of <see cref="Shape"/>.</summary>
    public long Count => ShapeMath.ElementCount(Shape);

    public bool Equals(ParameterSpec? other) =>
        other is not null && Name == other.Name && Shape.SequenceEqual(other.Shape);

    public override int GetHashCode() => HashCode.Combine(Name, Shape.Count);

    public override string ToString() => $"{Name} {ShapeMath.Format(Shape)}";

    /// <summary>Σ Count, with overflow checking.</summary>
    public static long TotalCount(IEnumerable<ParameterSpec> parameters)
    {
        long total = 0;
        foreach (var p in parameters)
            total = checked(total + p.Count);
        return total;
    }

    private static long[] CheckShape(string name, IReadOnlyList<long> shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        var copy = shape.ToArray();
        if (copy.Any(d => d < 1))
            throw new ArgumentException($"Parameter '{name}': every dimension of shape {ShapeMath.Format(copy)} must be ≥ 1.", nameof(shape));
        try
        {
            ShapeMath.ElementCount(copy);
        }
        catch (OverflowException)
        {
            throw new ArgumentException($"Parameter '{name}': shape {ShapeMath.Format(copy)} is too large.", nameof(shape));
        }
        return copy;
    }
}
