using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Compute;

/// <summary>
/// Tensor operations that take a .NET number (or TorchSharp's implicit alpha = 1), written so that the native
/// scalar outlives the native call. Use these instead of <c>x * 2.0</c>, <c>t.mul_(0.9)</c>, <c>t.add_(u, alpha)</c>,
/// <c>t.masked_fill(m, double.NegativeInfinity)</c>, <c>a + b</c> or <c>a.add_(b)</c> on tensors.
/// </summary>
/// <remarks>
/// Why: <see cref="Scalar"/> wraps a raw pointer to a native at::Scalar and frees it in its finalizer. An implicit
/// conversion creates a temporary whose last use is the read of its handle, so once the P/Invoke has started
/// nothing keeps it reachable: a GC triggered by any other thread can run the finalizer and free the scalar while
/// libtorch is still reading it ("Expected false to be true … toFloat at c10/core/Scalar.h", "Unknown scalar
/// type"), at random and only under allocation pressure. TorchSharp 0.107 does the same internally: add(Tensor),
/// add_(Tensor), add(Scalar) and add_(Scalar) — hence also <c>a + b</c> and <c>+=</c> between tensors — create a
/// temporary alpha = 1. Here each scalar is either held by <c>using</c> until the call has returned (which is also
/// what GC.KeepAlive would give) or is a static field, which is never collected. Dispose scopes do not help:
/// they track tensors, not scalars. ScalarLifetimeTests reproduces the race and checks that this assembly calls
/// no TorchSharp method that makes such a temporary outside this class.
/// </remarks>
public static class ScalarArgs
{
    /// <summary>alpha = 1 of the additions (and arange's start/step); static fields, so they are never finalized.
    /// Integer scalars, as TorchSharp's own temporaries.</summary>
    private static readonly Scalar One = 1.ToScalar(), Zero = 0.ToScalar(), Two = 2.ToScalar();

    /// <summary><c>a + b</c>.</summary>
    public static Tensor Plus(this Tensor a, Tensor b) => a.add(b, One);

    /// <summary><c>a + value</c>.</summary>
    public static Tensor Plus(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.add(s, One);
    }

    /// <summary><c>a - value</c> (an integer scalar keeps an int64 tensor int64).</summary>
    public static Tensor Minus(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.sub(s);
    }

    /// <summary><c>a * value</c>.</summary>
    public static Tensor Times(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.mul(s);
    }

    /// <summary><c>a / value</c>.</summary>
    public static Tensor DividedBy(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.div(s);
    }

    /// <summary><c>a.square()</c>: TorchSharp's square() is <c>pow(2)</c> with a temporary integer scalar; this is
    /// the same call with a held one (same kernel and same backward, hence bit-identical results).</summary>
    public static Tensor Square(this Tensor a) => a.pow(Two);

    /// <summary><c>a.add_(b)</c>.</summary>
    public static Tensor AddInPlace(this Tensor a, Tensor b) => a.add_(b, One);

    /// <summary><c>a.add_(b, alpha)</c>: a += alpha·b.</summary>
    public static Tensor AddInPlace(this Tensor a, Tensor b, double alpha)
    {
        using var s = alpha.ToScalar();
        return a.add_(b, s);
    }

    /// <summary><c>a.add_(value)</c>.</summary>
    public static Tensor AddInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.add_(s, One);
    }

    /// <summary><c>a.mul_(value)</c>.</summary>
    public static Tensor MulInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.mul_(s);
    }

    /// <summary><c>a.addcmul_(t1, t2, value)</c>: a += value·t1·t2.</summary>
    public static Tensor AddcmulInPlace(this Tensor a, Tensor t1, Tensor t2, double value)
    {
        using var s = value.ToScalar();
        return a.addcmul_(t1, t2, s);
    }

    /// <summary><c>a.addcdiv_(t1, t2, value)</c>: a += value·t1/t2.</summary>
    public static Tensor AddcdivInPlace(this Tensor a, Tensor t1, Tensor t2, double value)
    {
        using var s = value.ToScalar();
        return a.addcdiv_(t1, t2, s);
    }

    /// <summary><c>a.index_add(dim, index, source)</c> (alpha = 1).</summary>
    public static Tensor IndexAdd(this Tensor a, long dim, Tensor index, Tensor source) => a.index_add(dim, index, source, One);

    /// <summary><c>a.clamp_min(min)</c>.</summary>
    public static Tensor ClampMin(this Tensor a, double min)
    {
        using var s = min.ToScalar();
        return a.clamp_min(s);
    }

    /// <summary><c>a.masked_fill(mask, value)</c>.</summary>
    public static Tensor MaskedFill(this Tensor a, Tensor mask, double value)
    {
        using var s = value.ToScalar();
        return a.masked_fill(mask, s);
    }

    /// <summary><c>a == value</c>.</summary>
    public static Tensor EqualTo(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.eq(s);
    }

    /// <summary><c>a &lt; value</c>.</summary>
    public static Tensor LessThan(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.lt(s);
    }

    /// <summary><c>a &gt;= value</c>.</summary>
    public static Tensor GreaterOrEqual(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.ge(s);
    }

    /// <summary><c>torch.arange(end, dtype, device)</c>: 0, 1, …, end − 1 (TorchSharp's overload is
    /// <c>arange(0, end, 1)</c> with temporary scalars).</summary>
    public static Tensor Arange(long end, ScalarType dtype, Device device)
    {
        using var stop = end.ToScalar();
        return torch.arange(Zero, stop, One, dtype, device);
    }

    /// <summary><c>torch.full(size, value, dtype, device)</c>.</summary>
    public static Tensor Full(long size, double value, ScalarType dtype, Device device)
    {
        using var s = value.ToScalar();
        return torch.full(size, s, dtype: dtype, device: device);
    }
}
