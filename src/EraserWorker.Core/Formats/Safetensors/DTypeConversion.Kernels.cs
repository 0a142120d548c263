using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace EraserWorker.Core.Formats.Safetensors;

/// <summary>The vectorised conversions between the storage dtypes' bits and <see cref="float"/> / <see cref="double"/>
/// (each a <see cref="Vector{T}"/> loop with a scalar tail).</summary>
public static partial class DTypeConversion
{
    // ------------------------------------------------------------------ typed conversions (vector + scalar tail)

    /// <summary>IEEE binary16 bits → single, exact.</summary>
    public static void HalfToSingle(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        CheckSameLength(src.Length, dst.Length);
        int i = 0;
        if (Vector.IsHardwareAccelerated && src.Length >= Vector<ushort>.Count)
        {
            ref ushort s = ref MemoryMarshal.GetReference(src);
            ref uint d = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(dst));
            int step = Vector<ushort>.Count, half = Vector<uint>.Count;
            for (; i <= src.Length - step; i += step)
            {
                Vector.Widen(Vector.LoadUnsafe(ref s, (nuint)i), out var lo, out var hi);
                HalfBitsToSingleBits(lo).StoreUnsafe(ref d, (nuint)i);
                HalfBitsToSingleBits(hi).StoreUnsafe(ref d, (nuint)(i + half));
            }
        }
        HalfToSingleScalar(src[i..], dst[i..]);
    }

    /// <summary>Single → IEEE binary16 bits, rounded to nearest even (overflow → ±∞, NaN → quiet NaN).</summary>
    public static void SingleToHalf(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        CheckSameLength(src.Length, dst.Length);
        int i = 0;
        if (Vector.IsHardwareAccelerated && src.Length >= Vector<ushort>.Count)
        {
            ref uint s = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(src));
            ref ushort d = ref MemoryMarshal.GetReference(dst);
            int step = Vector<ushort>.Count, half = Vector<uint>.Count;
            for (; i <= src.Length - step; i += step)
            {
                var lo = SingleBitsToHalfBits(Vector.LoadUnsafe(ref s, (nuint)i));
                var hi = SingleBitsToHalfBits(Vector.LoadUnsafe(ref s, (nuint)(i + half)));
                Vector.Narrow(lo, hi).StoreUnsafe(ref d, (nuint)i);
            }
        }
        SingleToHalfScalar(src[i..], dst[i..]);
    }

    /// <summary>bfloat16 bits → single, exact (a 16-bit shift).</summary>
    public static void BFloat16ToSingle(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        CheckSameLength(src.Length, dst.Length);
        int i = 0;
        if (Vector.IsHardwareAccelerated && src.Length >= Vector<ushort>.Count)
        {
            ref ushort s = ref MemoryMarshal.GetReference(src);
            ref uint d = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(dst));
            int step = Vector<ushort>.Count, half = Vector<uint>.Count;
            for (; i <= src.Length - step; i += step)
            {
                Vector.Widen(Vector.LoadUnsafe(ref s, (nuint)i), out var lo, out var hi);
                Vector.ShiftLeft(lo, 16).StoreUnsafe(ref d, (nuint)i);
                Vector.ShiftLeft(hi, 16).StoreUnsafe(ref d, (nuint)(i + half));
            }
        }
        BFloat16ToSingleScalar(src[i..], dst[i..]);
    }

    /// <summary>Single → bfloat16 bits, rounded to nearest even (overflow → ±∞, NaN → quiet NaN).</summary>
    public static void SingleToBFloat16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        CheckSameLength(src.Length, dst.Length);
        int i = 0;
        if (Vector.IsHardwareAccelerated && src.Length >= Vector<ushort>.Count)
        {
            ref uint s = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(src));
            ref ushort d = ref MemoryMarshal.GetReference(dst);
            int step = Vector<ushort>.Count, half = Vector<uint>.Count;
            for (; i <= src.Length - step; i += step)
            {
                var lo = SingleBitsToBFloat16Bits(Vector.LoadUnsafe(ref s, (nuint)i));
                var hi = SingleBitsToBFloat16Bits(Vector.LoadUnsafe(ref s, (nuint)(i + half)));
                Vector.Narrow(lo, hi).StoreUnsafe(ref d, (nuint)i);
            }
        }
        SingleToBFloat16Scalar(src[i..], dst[i..]);
    }

    /// <summary>Single → double, exact.</summary>
    public static void SingleToDouble(ReadOnlySpan<float> src, Span<double> dst)
    {
        CheckSameLength(src.Length, dst.Length);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref float s = ref MemoryMarshal.GetReference(src);
            ref double d = ref MemoryMarshal.GetReference(dst);
            int step = Vector<float>.Count, half = Vector<double>.Count;
            for (; i <= src.Length - step; i += step)
            {
                Vector.Widen(Vector.LoadUnsafe(ref s, (nuint)i), out var lo, out var hi);
                lo.StoreUnsafe(ref d, (nuint)i);
                hi.StoreUnsafe(ref d, (nuint)(i + half));
            }
        }
        for (; i < src.Length; i++)
            dst[i] = src[i];
    }

    /// <summary>Double → single, rounded to nearest even.</summary>
    public static void DoubleToSingle(ReadOnlySpan<double> src, Span<float> dst)
    {
        CheckSameLength(src.Length, dst.Length);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref double s = ref MemoryMarshal.GetReference(src);
            ref float d = ref MemoryMarshal.GetReference(dst);
            int step = Vector<float>.Count, half = Vector<double>.Count;
            for (; i <= src.Length - step; i += step)
                Vector.Narrow(Vector.LoadUnsafe(ref s, (nuint)i), Vector.LoadUnsafe(ref s, (nuint)(i + half))).StoreUnsafe(ref d, (nuint)i);
        }
        for (; i < src.Length; i++)
            dst[i] = (float)src[i];
    }

    /// <summary>Double → single rounded to odd (truncate, then set the last bit if inexact): a following rounding
    /// to ≤ 22 significant bits is then the correctly rounded result of the double.</summary>
    internal static void DoubleToSingleRoundToOdd(ReadOnlySpan<double> src, Span<float> dst)
    {
        CheckSameLength(src.Length, dst.Length);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref double s = ref MemoryMarshal.GetReference(src);
            ref uint d = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(dst));
            int step = Vector<float>.Count, half = Vector<double>.Count;
            for (; i <= src.Length - step; i += step)
            {
                var x0 = Vector.LoadUnsafe(ref s, (nuint)i);
                var x1 = Vector.LoadUnsafe(ref s, (nuint)(i + half));
                var f = Vector.Narrow(x0, x1);
                Vector.Widen(f, out var w0, out var w1);
                var inexact = Vector.Narrow(~Vector.Equals(w0, x0), ~Vector.Equals(w1, x1));
                var away = Vector.Narrow(
                    Vector.GreaterThan(Vector.Abs(w0), Vector.Abs(x0)),
                    Vector.GreaterThan(Vector.Abs(w1), Vector.Abs(x1)));
                // away is all ones (= −1) where rounding went away from zero: step the magnitude back by one ulp.
                var bits = Vector.AsVectorUInt32(f) + Vector.AsVectorUInt32(away);
                bits |= Vector.AsVectorUInt32(inexact) & Vector<uint>.One;
                bits.StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < src.Length; i++)
            dst[i] = RoundToOddScalar(src[i]);
    }

    internal static float RoundToOddScalar(double x)
    {
        float f = (float)x;
        uint bits = BitConverter.SingleToUInt32Bits(f);
        double w = f;
        if (Math.Abs(w) > Math.Abs(x))
            bits--;
        if (w != x)
            bits |= 1;
        return BitConverter.UInt32BitsToSingle(bits);
    }

    // ------------------------------------------------------------------ per-lane bit algorithms

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<uint> HalfBitsToSingleBits(Vector<uint> h)
    {
        // Giesen's branch-free half → float: move exponent+mantissa into place and rebias; Inf/NaN get the
        // exponent pushed to 255; subnormals are renormalised by a float subtraction (exact).
        var shiftedExp = new Vector<uint>(0x7C00u << 13);
        var o = Vector.ShiftLeft(h & new Vector<uint>(0x7FFFu), 13);
        var exp = o & shiftedExp;
        o += new Vector<uint>((127u - 15u) << 23);
        var infNan = Vector.Equals(exp, shiftedExp);
        var zeroExp = Vector.Equals(exp, Vector<uint>.Zero);
        o += infNan & new Vector<uint>((128u - 16u) << 23);
        var sub = Vector.AsVectorUInt32(
            Vector.AsVectorSingle(o + new Vector<uint>(1u << 23)) - Vector.AsVectorSingle(new Vector<uint>(113u << 23)));
        o = Vector.ConditionalSelect(zeroExp, sub, o);
        return o | Vector.ShiftLeft(h & new Vector<uint>(0x8000u), 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<uint> SingleBitsToHalfBits(Vector<uint> x)
    {
        var sign = Vector.ShiftRightLogical(x, 16) & new Vector<uint>(0x8000u);
        var a = x & new Vector<uint>(0x7FFF_FFFFu);
        var isNaN = Vector.GreaterThan(a, new Vector<uint>(0x7F80_0000u));
        // Normal range (|x| ≥ 2⁻¹⁴): round the 13 dropped bits to nearest even, rebias; clamp overflow to ∞.
        var odd = Vector.ShiftRightLogical(a, 13) & Vector<uint>.One;
        var normal = Vector.ShiftRightLogical(a + new Vector<uint>(0x0FFFu) + odd - new Vector<uint>(0x3800_0000u), 13);
        normal = Vector.Min(normal, new Vector<uint>(0x7C00u));
        // Subnormal range: adding 0.5 makes the FPU round at 2⁻²⁴ (nearest even); the low bits are the result.
        var denormMagic = new Vector<uint>(126u << 23);
        var sub = Vector.AsVectorUInt32(Vector.AsVectorSingle(a) + Vector.AsVectorSingle(denormMagic)) - denormMagic;
        var o = Vector.ConditionalSelect(Vector.LessThan(a, new Vector<uint>(113u << 23)), sub, normal);
        var nan = new Vector<uint>(0x7E00u) | (Vector.ShiftRightLogical(a, 13) & new Vector<uint>(0x03FFu));
        o = Vector.ConditionalSelect(isNaN, nan, o);
        return o | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<uint> SingleBitsToBFloat16Bits(Vector<uint> x)
    {
        var odd = Vector.ShiftRightLogical(x, 16) & Vector<uint>.One;
        var rounded = Vector.ShiftRightLogical(x + new Vector<uint>(0x7FFFu) + odd, 16);
        var isNaN = Vector.GreaterThan(x & new Vector<uint>(0x7FFF_FFFFu), new Vector<uint>(0x7F80_0000u));
        var nan = Vector.ShiftRightLogical(x, 16) | new Vector<uint>(0x0040u);
        return Vector.ConditionalSelect(isNaN, nan, rounded);
    }

    // ------------------------------------------------------------------ scalar reference paths (also the tails)

    internal static void HalfToSingleScalar(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        for (int i = 0; i < src.Length; i++)
            dst[i] = HalfBitsToSingle(src[i]);
    }

    internal static void SingleToHalfScalar(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        for (int i = 0; i < src.Length; i++)
            dst[i] = SingleToHalfBits(src[i]);
    }

    internal static void BFloat16ToSingleScalar(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        for (int i = 0; i < src.Length; i++)
            dst[i] = BitConverter.UInt32BitsToSingle((uint)src[i] << 16);
    }

    internal static void SingleToBFloat16Scalar(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        for (int i = 0; i < src.Length; i++)
            dst[i] = SingleToBFloat16Bits(src[i]);
    }

    internal static float HalfBitsToSingle(ushort h)
    {
        uint o = (h & 0x7FFFu) << 13;
        uint exp = o & (0x7C00u << 13);
        o += (127u - 15u) << 23;
        if (exp == 0x7C00u << 13)
            o += (128u - 16u) << 23;
        else if (exp == 0)
            o = BitConverter.SingleToUInt32Bits(
                BitConverter.UInt32BitsToSingle(o + (1u << 23)) - BitConverter.UInt32BitsToSingle(113u << 23));
        return BitConverter.UInt32BitsToSingle(o | ((h & 0x8000u) << 16));
    }

    internal static ushort SingleToHalfBits(float f)
    {
        uint x = BitConverter.SingleToUInt32Bits(f);
        uint sign = (x >> 16) & 0x8000u;
        uint a = x & 0x7FFF_FFFFu;
        uint o;
        if (a > 0x7F80_0000u)
            o = 0x7E00u | ((a >> 13) & 0x03FFu);
        else if (a < 113u << 23)
            o = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(a) + BitConverter.UInt32BitsToSingle(126u << 23)) - (126u << 23);
        else
            o = Math.Min((a + 0x0FFFu + ((a >> 13) & 1u) - 0x3800_0000u) >> 13, 0x7C00u);
        return (ushort)(o | sign);
    }

    internal static ushort SingleToBFloat16Bits(float f)
    {
        uint x = BitConverter.SingleToUInt32Bits(f);
        if ((x & 0x7FFF_FFFFu) > 0x7F80_0000u)
            return (ushort)((x >> 16) | 0x0040u);
        return (ushort)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
    }

    // ------------------------------------------------------------------ helpers

    private const int StagingElements = 1024;

    private static void CheckLengths(string dtype, int byteLength, int elementCount)
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Safetensors conversions need a little-endian machine.");
        if (!IsFloating(dtype))
            throw NotFloating(dtype);
        int size = ElementSize(dtype);
        if ((long)elementCount * size != byteLength)
            throw new ArgumentException(
                $"{elementCount} {dtype} elements need {(long)elementCount * size} bytes, but the byte span has {byteLength}.");
    }

    private static void CheckSameLength(int a, int b)
    {
        if (a != b)
            throw new ArgumentException($"Source and destination lengths differ ({a} vs {b}).");
    }

    private static ArgumentException NotFloating(string dtype) =>
        new($"Cannot convert dtype '{dtype}' to or from floating point (supported: F32, F16, BF16, F64).", nameof(dtype));
}
