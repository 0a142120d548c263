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
public static partial class DTypeConversion
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
}
