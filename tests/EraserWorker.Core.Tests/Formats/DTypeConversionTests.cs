using System.Runtime.InteropServices;
using EraserWorker.Core.Formats.Safetensors;
using EraserWorker.Core.Tests.TestSupport;

namespace EraserWorker.Core.Tests.Formats;

public sealed class DTypeConversionTests
{
    private static readonly int[] OddLengths = [1, 3, 7, 15, 17, 31, 33, 63, 65, 1001, 4099];

    private static ushort[] AllSixteenBitPatterns() => Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();

    [Fact]
    public void HalfToSingle_AllBitPatterns_MatchSystemHalf()
    {
        var bits = AllSixteenBitPatterns();
        var vector = new float[bits.Length];
        var scalar = new float[bits.Length];
        DTypeConversion.HalfToSingle(bits, vector);
        DTypeConversion.HalfToSingleScalar(bits, scalar);
        for (int i = 0; i < bits.Length; i++)
        {
            float expected = ReferenceFloats.HalfValue(bits[i]);
            AssertSameFloat(expected, vector[i], $"vector, half bits 0x{bits[i]:X4}");
            AssertSameFloat(expected, scalar[i], $"scalar, half bits 0x{bits[i]:X4}");
        }
    }

    [Fact]
    public void BFloat16ToSingle_AllBitPatterns_MatchFieldDecoding()
    {
        var bits = AllSixteenBitPatterns();
        var vector = new float[bits.Length];
        var scalar = new float[bits.Length];
        DTypeConversion.BFloat16ToSingle(bits, vector);
        DTypeConversion.BFloat16ToSingleScalar(bits, scalar);
        for (int i = 0; i < bits.Length; i++)
        {
            double expected = ReferenceFloats.BFloat16Value(bits[i]);
            Assert.True(double.IsNaN(expected) ? float.IsNaN(vector[i]) : expected.Equals((double)vector[i]), $"vector 0x{bits[i]:X4}");
            Assert.True(double.IsNaN(expected) ? float.IsNaN(scalar[i]) : expected.Equals((double)scalar[i]), $"scalar 0x{bits[i]:X4}");
            if (!double.IsNaN(expected))
                Assert.Equal(double.IsNegative(expected), float.IsNegative(vector[i]));
        }
    }

    public static TheoryData<float> HalfEdgeCases() => new()
    {
        0f, -0f, 1f, -1f, 65504f, -65504f, 65519.996f, 65520f, -65520f, 1e6f, float.MaxValue,
        float.PositiveInfinity, float.NegativeInfinity, float.NaN,
        float.Epsilon, -float.Epsilon, 1e-40f,                            // float subnormals → ±0
        (float)Math.ScaleB(1, -24), (float)Math.ScaleB(1, -25),           // smallest half subnormal; its half → tie to 0
        (float)Math.ScaleB(3, -25), (float)Math.ScaleB(5, -25),           // ties between subnormals (→ even)
        (float)Math.ScaleB(1, -25) * 1.0000001f,                          // just above the tie → rounds up
        (float)Math.ScaleB(1, -14), (float)Math.ScaleB(1023, -24),        // smallest normal, largest subnormal
        (float)Math.ScaleB(2047, -25),                                    // largest subnormal + ½ulp → smallest normal
        1f + (float)Math.ScaleB(1, -11), 1f + (float)Math.ScaleB(3, -11), // ties at 1 (→ 1 and → 1 + 2⁻⁹)
        -(1f + (float)Math.ScaleB(1, -11)), 2048f + 1f, 2048f + 3f, 0.1f, 1f / 3f, -2.5e-5f,
    };

    [Theory]
    [MemberData(nameof(HalfEdgeCases))]
    public void SingleToHalf_EdgeCases_MatchSystemHalf(float value)
    {
        ushort expected = ReferenceFloats.HalfBits(value);
        var vector = new ushort[33];
        var input = Enumerable.Repeat(value, 33).ToArray();
        DTypeConversion.SingleToHalf(input, vector); // 33: two full vectors (any width) and a scalar tail
        var scalar = DTypeConversion.SingleToHalfBits(value);
        foreach (ushort actual in vector.Append(scalar))
        {
            if (float.IsNaN(value))
            {
                Assert.True(Half.IsNaN(BitConverter.UInt16BitsToHalf(actual)), $"0x{actual:X4} is not NaN");
                Assert.Equal(expected & 0x8000, actual & 0x8000);
                Assert.NotEqual(0, actual & 0x0200); // quiet
            }
            else
            {
                Assert.Equal(expected, actual);
            }
        }
    }

    [Fact]
    public void NaNs_StayNaN_KeepTheirSign_AndBecomeQuiet()
    {
        var nans = new[] { float.NaN, -float.NaN, BitConverter.UInt32BitsToSingle(0x7F80_0001), BitConverter.UInt32BitsToSingle(0xFF80_2000) };
        var input = Enumerable.Repeat(nans, 9).SelectMany(x => x).ToArray(); // 36: vector and scalar lanes
        var half = new ushort[input.Length];
        var bf16 = new ushort[input.Length];
        DTypeConversion.SingleToHalf(input, half);
        DTypeConversion.SingleToBFloat16(input, bf16);
        for (int i = 0; i < input.Length; i++)
        {
            bool negative = float.IsNegative(input[i]);
            Assert.Equal(0x7E00, half[i] & 0x7E00);
            Assert.Equal(negative, (half[i] & 0x8000) != 0);
            Assert.Equal(0x7FC0, bf16[i] & 0x7FC0);
            Assert.Equal(negative, (bf16[i] & 0x8000) != 0);
        }
    }

    [Fact]
    public void SingleToHalf_RandomValues_MatchSystemHalf()
    {
        var random = new Random(11);
        var values = ReferenceFloats.RandomHalfRangeFloats(random, 200_003).Concat(ReferenceFloats.RandomBitsFloats(random, 100_001)).ToArray();
        var actual = new ushort[values.Length];
        DTypeConversion.SingleToHalf(values, actual);
        for (int i = 0; i < values.Length; i++)
        {
            if (float.IsNaN(values[i]))
                Assert.True(Half.IsNaN(BitConverter.UInt16BitsToHalf(actual[i])));
            else
                Assert.True(ReferenceFloats.HalfBits(values[i]) == actual[i], $"{values[i]:R}: expected 0x{ReferenceFloats.HalfBits(values[i]):X4}, got 0x{actual[i]:X4}");
        }
    }

    public static TheoryData<float> BFloat16EdgeCases() => new()
    {
        0f, -0f, 1f, -1f, float.MaxValue, -float.MaxValue, float.PositiveInfinity, float.NegativeInfinity, float.NaN,
        float.Epsilon, -float.Epsilon, BitConverter.UInt32BitsToSingle(0x0000_8000), BitConverter.UInt32BitsToSingle(0x0001_8000),
        BitConverter.UInt32BitsToSingle(0x007F_FFFF), BitConverter.UInt32BitsToSingle(0x0080_0000),
        BitConverter.UInt32BitsToSingle(0x3F80_8000), BitConverter.UInt32BitsToSingle(0x3F81_8000), // ties at 1 → even
        BitConverter.UInt32BitsToSingle(0x3F80_8001), BitConverter.UInt32BitsToSingle(0x3F80_7FFF),
        BitConverter.UInt32BitsToSingle(0x7F7F_7FFF), BitConverter.UInt32BitsToSingle(0x7F7F_8000),   // below / at the overflow tie
        BitConverter.UInt32BitsToSingle(0xFF7F_8000), 0.1f, 1f / 3f, -3.14159f,
    };

    [Theory]
    [MemberData(nameof(BFloat16EdgeCases))]
    public void SingleToBFloat16_EdgeCases_MatchReference(float value)
    {
        ushort expected = ReferenceFloats.BFloat16Bits(value);
        var vector = new ushort[33];
        DTypeConversion.SingleToBFloat16(Enumerable.Repeat(value, 33).ToArray(), vector);
        foreach (ushort actual in vector.Append(DTypeConversion.SingleToBFloat16Bits(value)))
        {
            if (float.IsNaN(value))
            {
                Assert.True(double.IsNaN(ReferenceFloats.BFloat16Value(actual)));
                Assert.NotEqual(0, actual & 0x0040);
            }
            else
            {
                Assert.Equal(expected, actual);
            }
        }
    }

    [Fact]
    public void SingleToBFloat16_RandomValues_MatchReference()
    {
        var random = new Random(12);
        var values = ReferenceFloats.RandomBitsFloats(random, 100_003);
        var actual = new ushort[values.Length];
        DTypeConversion.SingleToBFloat16(values, actual);
        for (int i = 0; i < values.Length; i++)
        {
            if (float.IsNaN(values[i]))
                Assert.True(double.IsNaN(ReferenceFloats.BFloat16Value(actual[i])));
            else
                Assert.True(ReferenceFloats.BFloat16Bits(values[i]) == actual[i], $"{values[i]:R} (0x{BitConverter.SingleToUInt32Bits(values[i]):X8})");
        }
    }

    [Fact]
    public void VectorPaths_EqualScalarPaths_OnRandomDataOfOddLengths()
    {
        var random = new Random(13);
        foreach (int n in OddLengths)
        {
            var floats = ReferenceFloats.RandomBitsFloats(random, n / 2).Concat(ReferenceFloats.RandomHalfRangeFloats(random, n - n / 2)).ToArray();
            var bits = Enumerable.Range(0, n).Select(_ => (ushort)random.Next(65536)).ToArray();

            AssertSameBits(n, (s, d) => DTypeConversion.HalfToSingle(bits, d), (s, d) => DTypeConversion.HalfToSingleScalar(bits, d));
            AssertSameBits(n, (s, d) => DTypeConversion.BFloat16ToSingle(bits, d), (s, d) => DTypeConversion.BFloat16ToSingleScalar(bits, d));

            var v16 = new ushort[n];
            var s16 = new ushort[n];
            DTypeConversion.SingleToHalf(floats, v16);
            DTypeConversion.SingleToHalfScalar(floats, s16);
            Assert.Equal(s16, v16);
            DTypeConversion.SingleToBFloat16(floats, v16);
            DTypeConversion.SingleToBFloat16Scalar(floats, s16);
            Assert.Equal(s16, v16);

            var doubles = floats.Select(f => (double)f * (1 + random.NextDouble() * 1e-6)).ToArray();
            var vOdd = new float[n];
            DTypeConversion.DoubleToSingleRoundToOdd(doubles, vOdd);
            for (int i = 0; i < n; i++)
                Assert.Equal(BitConverter.SingleToUInt32Bits(DTypeConversion.RoundToOddScalar(doubles[i])), BitConverter.SingleToUInt32Bits(vOdd[i]));
        }

        static void AssertSameBits(int n, Action<int, float[]> vector, Action<int, float[]> scalar)
        {
            var a = new float[n];
            var b = new float[n];
            vector(n, a);
            scalar(n, b);
            Assert.Equal(MemoryMarshal.Cast<float, uint>(b).ToArray(), MemoryMarshal.Cast<float, uint>(a).ToArray());
        }
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    [InlineData("F64")]
    public void ByteRoundTrip_OfRepresentableValues_IsExact(string dtype)
    {
        var random = new Random(14);
        int n = 1003;
        var bytes = new byte[n * DTypeConversion.ElementSize(dtype)];
        random.NextBytes(bytes);
        // Replace NaNs (payloads are not preserved) by zeros.
        var floats = new float[n];
        DTypeConversion.ToSingle(dtype, bytes, floats);
        for (int i = 0; i < n; i++)
            if (float.IsNaN(floats[i]))
                floats[i] = 0;
        var encoded = new byte[bytes.Length];
        DTypeConversion.FromSingle(dtype, floats, encoded);
        var decoded = new float[n];
        DTypeConversion.ToSingle(dtype, encoded, decoded);
        var reencoded = new byte[bytes.Length];
        DTypeConversion.FromSingle(dtype, decoded, reencoded);
        Assert.Equal(encoded, reencoded);
        if (dtype != "F64")
        {
            // A 16/32-bit value decoded to float and encoded again is bit-identical.
            var expectedValues = RawSafetensors.Decode(dtype, encoded);
            Assert.Equal(expectedValues, decoded.Select(f => (double)f));
        }

        var widened = new double[n];
        DTypeConversion.ToDouble(dtype, encoded, widened);
        Assert.Equal(decoded.Select(f => (double)f), widened);
        var fromDouble = new byte[bytes.Length];
        DTypeConversion.FromDouble(dtype, widened, fromDouble);
        Assert.Equal(encoded, fromDouble);
    }

    [Fact]
    public void FromDouble_RoundsOnce_NoDoubleRounding()
    {
        // 1 + 2⁻¹¹ + 2⁻⁴⁰ is just above the F16 tie between 1 and 1 + 2⁻¹⁰; via float it would become the tie and
        // round to 1. Same for BF16 at 1 + 2⁻⁸ + 2⁻⁴⁰.
        double h = 1 + Math.ScaleB(1, -11) + Math.ScaleB(1, -40);
        double b = 1 + Math.ScaleB(1, -8) + Math.ScaleB(1, -40);
        var random = new Random(15);
        var values = new List<double> { h, -h, b, -b, 65519.99999, 65520, 1e-8, Math.ScaleB(1, -25) + Math.ScaleB(1, -60), 0.0, -0.0, 1e300, -1e-300 };
        for (int i = 0; i < 5001; i++)
            values.Add(Math.ScaleB(1 + random.NextDouble(), random.Next(-30, 20)) * (random.Next(2) * 2 - 1));
        var input = values.ToArray();

        var half = new byte[input.Length * 2];
        DTypeConversion.FromDouble("F16", input, half);
        var bf16 = new byte[input.Length * 2];
        DTypeConversion.FromDouble("BF16", input, bf16);
        var f32 = new byte[input.Length * 4];
        DTypeConversion.FromDouble("F32", input, f32);
        for (int i = 0; i < input.Length; i++)
        {
            Assert.Equal(ReferenceFloats.HalfBits(input[i]), BitConverter.ToUInt16(half, 2 * i));
            Assert.Equal(ReferenceFloats.BFloat16Bits(input[i]), BitConverter.ToUInt16(bf16, 2 * i));
            Assert.Equal((float)input[i], BitConverter.ToSingle(f32, 4 * i));
        }
        Assert.Equal(0x3C01, BitConverter.ToUInt16(half, 0));
        Assert.Equal(0x3F81, BitConverter.ToUInt16(bf16, 4));
    }

    [Fact]
    public void NonFiniteAndRepresentability_AreDetected()
    {
        var values = new float[101];
        Assert.Equal(-1, DTypeConversion.IndexOfNonFinite(values));
        values[77] = float.NegativeInfinity;
        Assert.Equal(77, DTypeConversion.IndexOfNonFinite(values));
        values[77] = 0;
        values[100] = float.NaN;
        Assert.Equal(100, DTypeConversion.IndexOfNonFinite(values));
        values[100] = 65519.99f;
        Assert.Equal(-1, DTypeConversion.IndexOfNotRepresentable("F16", values));
        values[100] = -65520f; // rounds to −∞ in F16
        Assert.Equal(100, DTypeConversion.IndexOfNotRepresentable("F16", values));
        Assert.Equal(-1, DTypeConversion.IndexOfNotRepresentable("BF16", values));
        Assert.Equal(-1, DTypeConversion.IndexOfNotRepresentable("F32", values));
        values[3] = float.MaxValue; // rounds to ∞ in BF16
        Assert.Equal(3, DTypeConversion.IndexOfNotRepresentable("BF16", values));

        var doubles = new double[37];
        doubles[36] = 3.5e38; // beyond float
        Assert.Equal(36, DTypeConversion.IndexOfNotRepresentable("F32", doubles));
        Assert.Equal(-1, DTypeConversion.IndexOfNotRepresentable("F64", doubles));
        doubles[5] = double.NaN;
        Assert.Equal(5, DTypeConversion.IndexOfNonFinite(doubles));

        // The limits are exactly the first values that encode to ∞.
        foreach (string dtype in new[] { "F16", "BF16", "F32" })
        {
            double limit = DTypeConversion.FiniteLimit(dtype);
            var encoded = new byte[2 * DTypeConversion.ElementSize(dtype)];
            DTypeConversion.FromDouble(dtype, [limit, Math.BitDecrement(limit)], encoded);
            var back = new double[2];
            DTypeConversion.ToDouble(dtype, encoded, back);
            Assert.True(double.IsPositiveInfinity(back[0]), dtype);
            Assert.True(double.IsFinite(back[1]), dtype);
        }
    }

    [Fact]
    public void ElementSizes_AndArgumentChecks()
    {
        Assert.Equal(2, DTypeConversion.ElementSize("BF16"));
        Assert.Equal(8, DTypeConversion.ElementSize("I64"));
        Assert.Equal(1, DTypeConversion.ElementSize("BOOL"));
        Assert.Throws<ArgumentException>(() => DTypeConversion.ElementSize("F4"));
        Assert.True(DTypeConversion.IsFloating("F64"));
        Assert.False(DTypeConversion.IsFloating("I64"));
        Assert.False(DTypeConversion.IsStorageFloat("F64"));
        var e = Assert.Throws<ArgumentException>(() => DTypeConversion.ToSingle("I64", new byte[8], new float[1]));
        Assert.Contains("I64", e.Message);
        Assert.Throws<ArgumentException>(() => DTypeConversion.ToSingle("F16", new byte[5], new float[2]));
        Assert.Throws<ArgumentException>(() => DTypeConversion.FromSingle("BF16", new float[2], new byte[3]));
    }

    private static void AssertSameFloat(float expected, float actual, string what)
    {
        if (float.IsNaN(expected))
        {
            Assert.True(float.IsNaN(actual), what);
            Assert.Equal(float.IsNegative(expected), float.IsNegative(actual));
        }
        else
        {
            Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(actual),
                $"{what}: expected {expected:R}, got {actual:R}");
        }
    }
}
