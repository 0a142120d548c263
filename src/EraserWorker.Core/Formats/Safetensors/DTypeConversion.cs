using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace EraserWorker.Core.Formats.Safetensors;

/// <summary>
/// Element sizes of the safetensors dtypes and fast, exact conversions between the floating storage dtypes
/// (<c>F32</c>, <c>F16</c>, <c>BF16</c>, <c>F64</c>) and <see cref="float"/> / <see cref="double"/>.
/// </summary>
/// <remarks>
/// <para>Widening (F16/BF16 → F32/F64, F32 → F64) is exact. Narrowing rounds to nearest, ties to even, overflows to
/// ±∞, keeps the sign of zeros and produces quiet NaNs for NaN. Narrowing from <see cref="double"/> to F16/BF16 is
/// correctly rounded too (no double rounding: the intermediate single is rounded to odd).</para>
/// <para>The F16 ↔ F32 conversions are bit-identical to <see cref="Half"/>'s for every non-NaN value (NaN payloads
/// may differ; NaN stays NaN with its sign). All paths are vectorised with <see cref="Vector{T}"/> (AVX2 on x64,
/// AdvSimd on Arm64), with a scalar tail. Byte spans are little-endian, as in the file format.</para>
/// </remarks>
public static class DTypeConversion
{
    public const string F64 = "F64";
    public const string F32 = "F32";
    public const string F16 = "F16";
    public const string BF16 = "BF16";

    /// <summary>Bytes per element of a safetensors dtype (all byte-sized dtypes of the format).</summary>
    /// <exception cref="ArgumentException">Unknown or sub-byte dtype.</exception>
    public static int ElementSize(string dtype) =>
        TryGetElementSize(dtype, out int size)
            ? size
            : throw new ArgumentException($"Unknown safetensors dtype '{dtype}'.", nameof(dtype));

    /// <summary>Bytes per element of a safetensors dtype; false for unknown (or sub-byte, e.g. F4) dtypes.</summary>
    public static bool TryGetElementSize(string dtype, out int size)
    {
        size = dtype switch
        {
            "BOOL" or "U8" or "I8" or "F8_E5M2" or "F8_E4M3" or "F8_E8M0" => 1,
            "I16" or "U16" or "F16" or "BF16" => 2,
            "I32" or "U32" or "F32" => 4,
            "I64" or "U64" or "F64" or "C64" => 8,
            _ => 0,
        };
        return size != 0;
    }

    /// <summary>True for the dtypes this class converts: F64, F32, F16, BF16.</summary>
    public static bool IsFloating(string dtype) => dtype is F64 or F32 or F16 or BF16;

    /// <summary>True for the dtypes adapters parameters and gradient caches may be stored in: F32, F16, BF16.</summary>
    public static bool IsStorageFloat(string dtype) => dtype is F32 or F16 or BF16;

    // ------------------------------------------------------------------ dispatch on dtype names

    /// <summary>Decodes <paramref name="dst"/>.Length elements of <paramref name="dtype"/> from <paramref name="src"/>
    /// (which must hold exactly that many elements).</summary>
    public static void ToSingle(string dtype, ReadOnlySpan<byte> src, Span<float> dst)
    {
        CheckLengths(dtype, src.Length, dst.Length);
        switch (dtype)
        {
            case F32: src.CopyTo(MemoryMarshal.AsBytes(dst)); break;
            case F16: HalfToSingle(MemoryMarshal.Cast<byte, ushort>(src), dst); break;
            case BF16: BFloat16ToSingle(MemoryMarshal.Cast<byte, ushort>(src), dst); break;
            case F64: DoubleToSingle(MemoryMarshal.Cast<byte, double>(src), dst); break;
            default: throw NotFloating(dtype);
        }
    }

    /// <summary>Encodes <paramref name="src"/> as <paramref name="dtype"/> into <paramref name="dst"/> (exactly
    /// <c>src.Length × ElementSize</c> bytes), rounding to nearest even.</summary>
    public static void FromSingle(string dtype, ReadOnlySpan<float> src, Span<byte> dst)
    {
        CheckLengths(dtype, dst.Length, src.Length);
        switch (dtype)
        {
            case F32: MemoryMarshal.AsBytes(src).CopyTo(dst); break;
            case F16: SingleToHalf(src, MemoryMarshal.Cast<byte, ushort>(dst)); break;
            case BF16: SingleToBFloat16(src, MemoryMarshal.Cast<byte, ushort>(dst)); break;
            case F64: SingleToDouble(src, MemoryMarshal.Cast<byte, double>(dst)); break;
            default: throw NotFloating(dtype);
        }
    }

    /// <summary>Decodes <paramref name="dst"/>.Length elements of <paramref name="dtype"/> (exact).</summary>
    public static void ToDouble(string dtype, ReadOnlySpan<byte> src, Span<double> dst)
    {
        CheckLengths(dtype, src.Length, dst.Length);
        switch (dtype)
        {
            case F64: src.CopyTo(MemoryMarshal.AsBytes(dst)); return;
            case F32: SingleToDouble(MemoryMarshal.Cast<byte, float>(src), dst); return;
            case F16 or BF16:
                {
                    Span<float> staging = stackalloc float[StagingElements];
                    for (int i = 0; i < dst.Length; i += StagingElements)
                    {
                        int count = Math.Min(StagingElements, dst.Length - i);
                        var part = staging[..count];
                        ToSingle(dtype, src.Slice(i * 2, count * 2), part);
                        SingleToDouble(part, dst.Slice(i, count));
                    }
                    return;
                }
            default: throw NotFloating(dtype);
        }
    }

    /// <summary>Encodes <paramref name="src"/> as <paramref name="dtype"/>, correctly rounded (nearest, ties to even)
    /// straight from double precision.</summary>
    public static void FromDouble(string dtype, ReadOnlySpan<double> src, Span<byte> dst)
    {
        CheckLengths(dtype, dst.Length, src.Length);
        switch (dtype)
        {
            case F64: MemoryMarshal.AsBytes(src).CopyTo(dst); return;
            case F32: DoubleToSingle(src, MemoryMarshal.Cast<byte, float>(dst)); return;
            case F16 or BF16:
                {
                    Span<float> staging = stackalloc float[StagingElements];
                    for (int i = 0; i < src.Length; i += StagingElements)
                    {
                        int count = Math.Min(StagingElements, src.Length - i);
                        var part = staging[..count];
                        // Round to odd first: the second rounding (to 11 or 8 significant bits) is then correct.
                        DoubleToSingleRoundToOdd(src.Slice(i, count), part);
                        FromSingle(dtype, part, dst.Slice(i * 2, count * 2));
                    }
                    return;
                }
            default: throw NotFloating(dtype);
        }
    }

    /// <summary>
    /// The smallest magnitude that does <em>not</em> fit in <paramref name="dtype"/> as a finite value after rounding
    /// (65520 for F16, 2¹²⁸ − 2¹¹⁹ for BF16, 2¹²⁸ − 2¹⁰³ for F32, +∞ for F64).
    /// A value <c>x</c> encodes to a finite value iff <c>|x| &lt; limit</c>.
    /// </summary>
    public static double FiniteLimit(string dtype) => dtype switch
    {
        F16 => 65520.0,
        BF16 => Math.ScaleB(1, 128) - Math.ScaleB(1, 119),
        F32 => Math.ScaleB(1, 128) - Math.ScaleB(1, 103),
        F64 => double.PositiveInfinity,
        _ => throw NotFloating(dtype),
    };

    /// <summary>Index of the first element that is NaN, ±∞ or would round to ±∞ in <paramref name="dtype"/>; −1 if none.</summary>
    public static int IndexOfNotRepresentable(string dtype, ReadOnlySpan<float> values)
    {
        double limit = FiniteLimit(dtype);
        return limit >= float.MaxValue ? IndexOfNonFinite(values) : IndexOfMagnitudeNotBelow(values, (float)limit);
    }

    /// <inheritdoc cref="IndexOfNotRepresentable(string, ReadOnlySpan{float})"/>
    public static int IndexOfNotRepresentable(string dtype, ReadOnlySpan<double> values)
    {
        double limit = FiniteLimit(dtype);
        var lim = new Vector<double>(limit);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref double start = ref MemoryMarshal.GetReference(values);
            for (; i <= values.Length - Vector<double>.Count; i += Vector<double>.Count)
            {
                var v = Vector.Abs(Vector.LoadUnsafe(ref start, (nuint)i));
                // NaN compares false, so it is caught by "not less than".
                if (!Vector.LessThanAll(v, lim))
                    break;
            }
        }
        for (; i < values.Length; i++)
            if (!(Math.Abs(values[i]) < limit))
                return i;
        return -1;
    }

    /// <summary>Index of the first NaN or ±∞; −1 if none.</summary>
    public static int IndexOfNonFinite(ReadOnlySpan<float> values)
    {
        var bits = MemoryMarshal.Cast<float, uint>(values);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var mask = new Vector<uint>(0x7F80_0000u);
            ref uint start = ref MemoryMarshal.GetReference(bits);
            for (; i <= bits.Length - Vector<uint>.Count; i += Vector<uint>.Count)
                if (Vector.EqualsAny(Vector.LoadUnsafe(ref start, (nuint)i) & mask, mask))
                    break;
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & 0x7F80_0000u) == 0x7F80_0000u)
                return i;
        return -1;
    }

    /// <summary>Index of the first NaN or ±∞ among the <paramref name="dtype"/> elements stored in
    /// <paramref name="raw"/> (F32, F16, BF16 or F64, little-endian); −1 if none. No conversion: the exponent bits are
    /// tested in place.</summary>
    public static int IndexOfNonFinite(string dtype, ReadOnlySpan<byte> raw)
    {
        CheckLengths(dtype, raw.Length, raw.Length / Math.Max(1, ElementSize(dtype)));
        return dtype switch
        {
            F32 => IndexOfNonFinite(MemoryMarshal.Cast<byte, float>(raw)),
            F64 => IndexOfNonFinite(MemoryMarshal.Cast<byte, double>(raw)),
            F16 => IndexOfAllOnes(MemoryMarshal.Cast<byte, ushort>(raw), 0x7C00),
            BF16 => IndexOfAllOnes(MemoryMarshal.Cast<byte, ushort>(raw), 0x7F80),
            _ => throw NotFloating(dtype),
        };
    }

    /// <summary>Index of the first 16-bit value whose bits under <paramref name="exponentMask"/> are all set.</summary>
    private static int IndexOfAllOnes(ReadOnlySpan<ushort> bits, ushort exponentMask)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var mask = new Vector<ushort>(exponentMask);
            ref ushort start = ref MemoryMarshal.GetReference(bits);
            for (; i <= bits.Length - Vector<ushort>.Count; i += Vector<ushort>.Count)
                if (Vector.EqualsAny(Vector.LoadUnsafe(ref start, (nuint)i) & mask, mask))
                    break;
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & exponentMask) == exponentMask)
                return i;
        return -1;
    }

    /// <summary>Index of the first NaN or ±∞; −1 if none.</summary>
    public static int IndexOfNonFinite(ReadOnlySpan<double> values)
    {
        var bits = MemoryMarshal.Cast<double, ulong>(values);
        const ulong expMask = 0x7FF0_0000_0000_0000ul;
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var mask = new Vector<ulong>(expMask);
            ref ulong start = ref MemoryMarshal.GetReference(bits);
            for (; i <= bits.Length - Vector<ulong>.Count; i += Vector<ulong>.Count)
                if (Vector.EqualsAny(Vector.LoadUnsafe(ref start, (nuint)i) & mask, mask))
                    break;
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & expMask) == expMask)
                return i;
        return -1;
    }

    private static int IndexOfMagnitudeNotBelow(ReadOnlySpan<float> values, float limit)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var lim = new Vector<float>(limit);
            ref float start = ref MemoryMarshal.GetReference(values);
            for (; i <= values.Length - Vector<float>.Count; i += Vector<float>.Count)
                if (!Vector.LessThanAll(Vector.Abs(Vector.LoadUnsafe(ref start, (nuint)i)), lim))
                    break;
        }
        for (; i < values.Length; i++)
            if (!(MathF.Abs(values[i]) < limit))
                return i;
        return -1;
    }

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
