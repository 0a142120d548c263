namespace EraserWorker.Core.Tests.TestSupport;

/// <summary>
/// Independent, slow reference conversions for the Formats tests: System.Half for IEEE binary16, and bfloat16
/// decoded from its fields and rounded by comparing the two neighbouring candidates in double arithmetic.
/// </summary>
public static class ReferenceFloats
{
    public static ushort HalfBits(double value) => BitConverter.HalfToUInt16Bits((Half)value);

    public static ushort HalfBits(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    public static float HalfValue(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    /// <summary>bfloat16 bits → value, from sign, exponent and fraction (no bit tricks shared with the code under test).</summary>
    public static double BFloat16Value(ushort bits)
    {
        int sign = bits >> 15, exponent = (bits >> 7) & 0xFF, fraction = bits & 0x7F;
        double magnitude = exponent switch
        {
            0 => Math.ScaleB(fraction, -126 - 7),
            0xFF => fraction == 0 ? double.PositiveInfinity : double.NaN,
            _ => Math.ScaleB(128 + fraction, exponent - 127 - 7),
        };
        return sign == 1 ? -magnitude : magnitude;
    }

    /// <summary>Correctly rounded (nearest, ties to even) bfloat16 of a double, by candidate comparison.</summary>
    public static ushort BFloat16Bits(double value)
    {
        if (double.IsNaN(value))
            return 0x7FC0;
        ushort sign = (ushort)(double.IsNegative(value) ? 0x8000 : 0);
        double a = Math.Abs(value);
        if (double.IsPositiveInfinity(a))
            return (ushort)(sign | 0x7F80);
        if (a == 0)
            return sign;
        // ulp of bfloat16 at a: 8 significant bits, minimum exponent −126 (subnormal spacing 2^−133).
        int e = Math.Max(Math.ILogB(a), -126);
        double ulp = Math.ScaleB(1.0, e - 7);
        double lo = Math.Floor(a / ulp) * ulp, hi = lo + ulp;
        double pick;
        double dLo = a - lo, dHi = hi - a;
        if (dLo < dHi)
            pick = lo;
        else if (dHi < dLo)
            pick = hi;
        else
            pick = ((long)(lo / ulp) & 1) == 0 ? lo : hi;
        double max = Math.ScaleB(255, 127 - 7); // (2 − 2⁻⁷)·2¹²⁷
        if (pick > max)
            return (ushort)(sign | 0x7F80);
        // pick is representable in bfloat16; encode it from its fields.
        int pe = Math.ILogB(pick);
        if (pe < -126)
            return (ushort)(sign | (ushort)(pick / Math.ScaleB(1.0, -133)));
        int fraction = (int)(pick / Math.ScaleB(1.0, pe - 7)) - 128;
        return (ushort)(sign | ((pe + 127) << 7) | fraction);
    }

    /// <summary>Random floats whose bit patterns cover every exponent (incl. subnormals, ±∞, NaN).</summary>
    public static float[] RandomBitsFloats(Random random, int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++)
            values[i] = BitConverter.UInt32BitsToSingle((uint)random.NextInt64(0, 1L << 32));
        return values;
    }

    /// <summary>Random floats with exponents spread around the F16 range (subnormal to overflow), both signs.</summary>
    public static float[] RandomHalfRangeFloats(Random random, int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            int exponent = random.Next(-28, 18);
            values[i] = (float)(Math.ScaleB(1 + random.NextDouble(), exponent) * (random.Next(2) == 0 ? -1 : 1));
        }
        return values;
    }
}
