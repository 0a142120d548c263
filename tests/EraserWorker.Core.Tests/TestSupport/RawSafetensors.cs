using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace EraserWorker.Core.Tests.TestSupport;

/// <summary>Byte-level safetensors helpers for the Formats tests, independent of the code under test.</summary>
public static class RawSafetensors
{
    /// <summary>8-byte little-endian length + the header text as given (no padding) + data.</summary>
    public static byte[] Build(string headerJson, byte[] data, ulong? declaredLength = null)
    {
        byte[] header = Encoding.UTF8.GetBytes(headerJson);
        var file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, declaredLength ?? (ulong)header.Length);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Length);
        return file;
    }

    public sealed record Parsed(long HeaderLength, byte[] HeaderBytes, long DataStart, Dictionary<string, (string DType, long[] Shape, long Begin, long End)> Tensors,
        Dictionary<string, string>? Metadata, byte[] File)
    {
        public byte[] Bytes(string name)
        {
            var t = Tensors[name];
            return File.AsSpan((int)(DataStart + t.Begin), (int)(t.End - t.Begin)).ToArray();
        }
    }

    /// <summary>Hand-decodes a safetensors file with System.Text.Json and raw offsets.</summary>
    public static Parsed Parse(byte[] file)
    {
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(file);
        byte[] header = file.AsSpan(8, (int)n).ToArray();
        using var doc = JsonDocument.Parse(header);
        var tensors = new Dictionary<string, (string, long[], long, long)>();
        Dictionary<string, string>? metadata = null;
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__")
            {
                metadata = p.Value.EnumerateObject().ToDictionary(x => x.Name, x => x.Value.GetString()!);
                continue;
            }
            var offsets = p.Value.GetProperty("data_offsets");
            tensors[p.Name] = (p.Value.GetProperty("dtype").GetString()!,
                p.Value.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray(),
                offsets[0].GetInt64(), offsets[1].GetInt64());
        }
        return new Parsed(n, header, 8 + n, tensors, metadata, file);
    }

    public static Parsed ParseFile(string path) => Parse(File.ReadAllBytes(path));

    public static byte[] HalfBytes(IEnumerable<double> values) =>
        values.SelectMany(v => BitConverter.GetBytes(ReferenceFloats.HalfBits(v))).ToArray();

    public static byte[] BFloat16Bytes(IEnumerable<double> values) =>
        values.SelectMany(v => BitConverter.GetBytes(ReferenceFloats.BFloat16Bits(v))).ToArray();

    public static byte[] SingleBytes(IEnumerable<double> values) =>
        values.SelectMany(v => BitConverter.GetBytes((float)v)).ToArray();

    /// <summary>Reference encoding of values in a storage dtype (System.Half / candidate-rounded bfloat16 / float cast).</summary>
    public static byte[] Encode(string dtype, IEnumerable<double> values) => dtype switch
    {
        "F32" => SingleBytes(values),
        "F16" => HalfBytes(values),
        "BF16" => BFloat16Bytes(values),
        _ => throw new ArgumentException(dtype),
    };

    /// <summary>Reference decoding of a storage dtype to doubles.</summary>
    public static double[] Decode(string dtype, ReadOnlySpan<byte> bytes)
    {
        int size = dtype == "F32" ? 4 : 2;
        var result = new double[bytes.Length / size];
        for (int i = 0; i < result.Length; i++)
        {
            var item = bytes.Slice(i * size, size);
            result[i] = dtype switch
            {
                "F32" => BinaryPrimitives.ReadSingleLittleEndian(item),
                "F16" => (double)BinaryPrimitives.ReadHalfLittleEndian(item),
                "BF16" => ReferenceFloats.BFloat16Value(BinaryPrimitives.ReadUInt16LittleEndian(item)),
                _ => throw new ArgumentException(dtype),
            };
        }
        return result;
    }

    /// <summary>Every file below <paramref name="root"/> (relative path → bytes), for "nothing changed" checks.</summary>
    public static SortedDictionary<string, byte[]> Snapshot(string root) =>
        new(Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(root, f), File.ReadAllBytes), StringComparer.Ordinal);

    public static void AssertSameSnapshot(SortedDictionary<string, byte[]> before, SortedDictionary<string, byte[]> after)
    {
        Assert.Equal(before.Keys, after.Keys);
        foreach (var key in before.Keys)
            Assert.True(before[key].AsSpan().SequenceEqual(after[key]), $"{key} changed");
    }
}
