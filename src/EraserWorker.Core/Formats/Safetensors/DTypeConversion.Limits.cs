using System.Numerics;
using System.Runtime.InteropServices;

namespace EraserWorker.Core.Formats.Safetensors;

/// <summary>Which values a dtype can hold: the finite limits and vectorised scans for values that cannot be stored
/// (non-finite, or overflowing on narrowing), also on raw stored bytes without converting them.</summary>
public static partial class DTypeConversion
{
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
    public static int IndexOfNotRepresentable(string dtype, ReadOnlySpan<double> values) => IndexOfMagnitudeNotBelow(values, FiniteLimit(dtype));

    /// <summary>Index of the first NaN or ±∞; −1 if none.</summary>
    public static int IndexOfNonFinite(ReadOnlySpan<float> values) => IndexOfAllBitsSet(MemoryMarshal.Cast<float, uint>(values), 0x7F80_0000u);

    /// <summary>Index of the first NaN or ±∞; −1 if none.</summary>
    public static int IndexOfNonFinite(ReadOnlySpan<double> values) =>
        IndexOfAllBitsSet(MemoryMarshal.Cast<double, ulong>(values), 0x7FF0_0000_0000_0000ul);

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
            F16 => IndexOfAllBitsSet(MemoryMarshal.Cast<byte, ushort>(raw), (ushort)0x7C00),
            BF16 => IndexOfAllBitsSet(MemoryMarshal.Cast<byte, ushort>(raw), (ushort)0x7F80),
            _ => throw NotFloating(dtype),
        };
    }

    /// <summary>Index of the first value whose bits under <paramref name="exponentMask"/> are all set (an IEEE value
    /// with its exponent all ones: NaN or ±∞), for the 16-, 32- and 64-bit layouts alike.</summary>
    private static int IndexOfAllBitsSet<T>(ReadOnlySpan<T> bits, T exponentMask) where T : unmanaged, IBinaryInteger<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var mask = new Vector<T>(exponentMask);
            ref T start = ref MemoryMarshal.GetReference(bits);
            for (; i <= bits.Length - Vector<T>.Count; i += Vector<T>.Count)
                if (Vector.EqualsAny(Vector.LoadUnsafe(ref start, (nuint)i) & mask, mask))
                    break;
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & exponentMask) == exponentMask)
                return i;
        return -1;
    }

    /// <summary>Index of the first value whose magnitude is not below <paramref name="limit"/> (NaN compares false, so it
    /// is caught too); −1 if none.</summary>
    private static int IndexOfMagnitudeNotBelow<T>(ReadOnlySpan<T> values, T limit) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var lim = new Vector<T>(limit);
            ref T start = ref MemoryMarshal.GetReference(values);
            for (; i <= values.Length - Vector<T>.Count; i += Vector<T>.Count)
                if (!Vector.LessThanAll(Vector.Abs(Vector.LoadUnsafe(ref start, (nuint)i)), lim))
                    break;
        }
        for (; i < values.Length; i++)
            if (!(T.Abs(values[i]) < limit))
                return i;
        return -1;
    }
}
