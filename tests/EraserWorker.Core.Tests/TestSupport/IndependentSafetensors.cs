using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace EraserWorker.Core.Tests.TestSupport;

/// <summary>
/// A deliberately separate, minimal safetensors writer/reader for the influence tests, so adapters are built
/// and results read without going through the code under test.
/// </summary>
public static class IndependentSafetensors
{
    public sealed record Tensor(string Name, string DType, long[] Shape, byte[] Data);

    public static Tensor F32(string name, long[] shape, IEnumerable<double> values)
    {
        var data = values.SelectMany(v => BitConverter.GetBytes((float)v)).ToArray();
        return new Tensor(name, "F32", shape, data);
    }

    public static void Write(string path, IReadOnlyList<Tensor> tensors, IDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is not null)
            header["__metadata__"] = new JsonObject(metadata.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value)));
        long offset = 0;
        foreach (var t in tensors)
        {
            header[t.Name] = new JsonObject
            {
                ["dtype"] = t.DType,
                ["shape"] = new JsonArray(t.Shape.Select(s => (JsonNode?)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + t.Data.Length),
            };
            offset += t.Data.Length;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        using var file = File.Create(path);
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        file.Write(length);
        file.Write(json);
        for (int i = json.Length; i < padded; i++)
            file.WriteByte((byte)' ');
        foreach (var t in tensors)
            file.Write(t.Data);
    }

    /// <summary>Reads one F32 tensor's values.</summary>
    public static double[] ReadF32(string path, string name)
    {
        var bytes = File.ReadAllBytes(path);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using var doc = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
        var entry = doc.RootElement.GetProperty(name);
        if (entry.GetProperty("dtype").GetString() != "F32")
            throw new InvalidOperationException("not F32");
        var offsets = entry.GetProperty("data_offsets");
        long begin = 8 + headerLength + offsets[0].GetInt64(), end = 8 + headerLength + offsets[1].GetInt64();
        var values = new double[(end - begin) / 4];
        for (int i = 0; i < values.Length; i++)
            values[i] = BitConverter.ToSingle(bytes, (int)(begin + 4 * i));
        return values;
    }
}
