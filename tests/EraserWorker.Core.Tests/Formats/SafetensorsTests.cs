using System.Text;
using EraserWorker.Core.Formats.Safetensors;
using EraserWorker.Core.Tests.TestSupport;

namespace EraserWorker.Core.Tests.Formats;

public sealed class SafetensorsTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static byte[] RandomBytes(int seed, int length)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static List<(string Name, string DType, IReadOnlyList<long> Shape, ReadOnlyMemory<byte> Data)> MixedTensors() =>
    [
        ("z.lora_A.weight", "F16", [4, 6], RawSafetensors.HalfBytes(Enumerable.Range(0, 24).Select(i => i * 0.37 - 3))),
        ("a.lora_B.weight", "BF16", [6, 4], RawSafetensors.BFloat16Bytes(Enumerable.Range(0, 24).Select(i => i * -1.3 + 7))),
        ("head.weight", "F32", [3, 5], RawSafetensors.SingleBytes(Enumerable.Range(0, 15).Select(i => i / 7.0))),
        ("position_ids", "I64", [1, 3], RandomBytes(1, 24)),
        ("mask", "U8", [5], RandomBytes(2, 5)),
        ("scalar", "F64", [], RandomBytes(3, 8)),
        ("empty", "F32", [0, 4], Array.Empty<byte>()),
    ];

    [Fact]
    public void Write_ProducesTheStandardLayout_VerifiedByAnIndependentParse()
    {
        var tensors = MixedTensors();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ü + <tag> & \"quotes\"" };
        using var stream = new MemoryStream();
        SafetensorsWriter.Write(stream, tensors, metadata);
        var file = stream.ToArray();

        var parsed = RawSafetensors.Parse(file);
        Assert.Equal(0, parsed.HeaderLength % 8);
        int jsonLength = Array.FindLastIndex(parsed.HeaderBytes, b => b != (byte)' ') + 1;
        Assert.InRange(parsed.HeaderLength - jsonLength, 0, 7); // space padding only, as the Python writer does
        Assert.Equal((byte)'}', parsed.HeaderBytes[jsonLength - 1]);
        string headerText = Encoding.UTF8.GetString(parsed.HeaderBytes);
        Assert.StartsWith("{\"__metadata__\":", headerText);
        Assert.Equal(metadata, parsed.Metadata);
        Assert.Equal(tensors.Count, parsed.Tensors.Count);
        long expectedOffset = 0;
        foreach (var (name, dtype, shape, data) in tensors)
        {
            var t = parsed.Tensors[name];
            Assert.Equal(dtype, t.DType);
            Assert.Equal(shape, t.Shape);
            Assert.Equal(expectedOffset, t.Begin); // given order, contiguous
            Assert.Equal(data.ToArray(), parsed.Bytes(name));
            expectedOffset = t.End;
        }
        Assert.Equal(file.Length, parsed.DataStart + expectedOffset);

        // And the reader agrees.
        var header = SafetensorsHeader.Read(new MemoryStream(file), file.Length, "mixed.safetensors");
        Assert.Equal(parsed.DataStart, header.DataStart);
        Assert.Equal(parsed.HeaderBytes, header.RawHeaderBytes.ToArray());
        Assert.Equal(metadata, header.Metadata);
        Assert.Equal(tensors.Select(t => t.Name), header.Entries.Select(e => e.Name));
        Assert.Equal(24, header["z.lora_A.weight"].ElementCount);
        Assert.Equal(2, header["a.lora_B.weight"].ElementSize);
        Assert.Equal(1, header["scalar"].ElementCount);
        Assert.Equal(0, header["empty"].ElementCount);
        Assert.True(header.TryGet("mask", out var mask));
        Assert.Equal(new long[] { 5 }, mask.Shape);
        Assert.False(header.TryGet("missing", out _));
        Assert.Contains("missing", Assert.Throws<KeyNotFoundException>(() => header["missing"]).Message);
    }

    [Fact]
    public void Read_OrdersEntriesByDataOffset_AndAcceptsPaddingAndNoMetadata()
    {
        // Keys deliberately not in offset order, extra whitespace and padding.
        string json = "{ \"b\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},\n \"a\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]} }   ";
        var file = RawSafetensors.Build(json, new byte[16]);
        var header = SafetensorsHeader.Read(new MemoryStream(file), file.Length);
        Assert.Equal(new[] { "a", "b" }, header.Entries.Select(e => e.Name));
        Assert.Null(header.Metadata);
        Assert.Equal(8 + Encoding.UTF8.GetByteCount(json), header.DataStart);
        Assert.Equal(16, header.DataLength);
    }

    public static TheoryData<string, byte[], string> MalformedFiles()
    {
        static byte[] F(string json, int dataBytes) => RawSafetensors.Build(json, new byte[dataBytes]);
        const string good = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
        var truncated = F(good, 16)[..^1];
        return new TheoryData<string, byte[], string>
        {
            { "empty file", [], "truncated" },
            { "short prefix", [1, 2, 3], "truncated" },
            { "truncated data", truncated, "out of bounds" },
            { "length beyond file", RawSafetensors.Build(good, new byte[16], declaredLength: 10_000), "beyond the end of the file" },
            { "absurd length", RawSafetensors.Build(good, new byte[16], declaredLength: ulong.MaxValue), "absurd" },
            { "bad json", F("{\"t\":{\"dtype\":\"F32\",", 0), "not valid JSON" },
            { "not json object start", F("[1,2,3]", 0), "does not start with '{'" },
            { "unknown dtype", F("{\"t\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2), "unknown dtype 'Q7'" },
            { "missing dtype", F("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "'dtype'" },
            { "missing shape", F("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8), "'shape'" },
            { "missing offsets", F("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8), "data_offsets" },
            { "negative dim", F("{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8), "non-negative" },
            { "wrong byte length", F("{\"t\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 16), "does not match shape [2, 3]" },
            { "offsets out of bounds", F("{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8), "out of bounds" },
            { "end before begin", F("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8), "end before" },
            {
                "overlapping offsets",
                F("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16),
                "overlap"
            },
            {
                "gap between tensors",
                F("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12),
                "contiguous"
            },
            { "trailing bytes", F(good, 20), "cover 16 bytes but the data section has 20" },
            { "metadata not strings", F("{\"__metadata__\":{\"n\":1},\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1), "not a string" },
            {
                "duplicate tensor",
                F("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2),
                "t"
            },
        };
    }

    [Theory]
    [MemberData(nameof(MalformedFiles))]
    public void Read_RejectsMalformedFiles_WithClearMessages(string what, byte[] file, string fragment)
    {
        string path = _temp.Sub("bad-" + what.Replace(' ', '-') + ".safetensors");
        File.WriteAllBytes(path, file);
        var fromFile = Assert.Throws<InvalidDataException>(() => SafetensorsHeader.ReadFile(path));
        Assert.Contains(fragment, fromFile.Message);
        Assert.StartsWith(Path.GetFileName(path) + ":", fromFile.Message);

        var fromStream = Assert.Throws<InvalidDataException>(() => SafetensorsHeader.Read(new MemoryStream(file), file.Length, "x.safetensors"));
        Assert.Contains(fragment, fromStream.Message);
    }

    [Fact]
    public void Read_DuplicateTensor_NamesIt()
    {
        var file = RawSafetensors.Build("{\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", new byte[2]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsHeader.Read(new MemoryStream(file), file.Length));
        Assert.Contains("dup", e.Message);
    }

    [Fact]
    public void Write_RejectsInconsistentTensors()
    {
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(new MemoryStream(),
            [("t", "F32", [3], new byte[8])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(new MemoryStream(),
            [("t", "F32", [1], new byte[4]), ("t", "F32", [1], new byte[4])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(new MemoryStream(),
            [("t", "X9", [1], new byte[4])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(new MemoryStream(),
            [("__metadata__", "U8", [1], new byte[1])]));
    }

    private string WriteMixed(string name)
    {
        string path = _temp.Sub(name);
        SafetensorsWriter.WriteFile(path, MixedTensors(), new Dictionary<string, string> { ["format"] = "pt" });
        return path;
    }

    [Fact]
    public void RewriteWith_ReplacesOnlyTheNamedTensors_AndKeepsEveryOtherByte()
    {
        string source = WriteMixed("source.safetensors");
        string destination = _temp.Sub("rewritten.safetensors");
        var random = new Random(5);
        var newA = Enumerable.Range(0, 24).Select(_ => (float)(random.NextDouble() * 8 - 4)).ToArray();
        var newB = Enumerable.Range(0, 24).Select(_ => (float)(random.NextDouble() * 100 - 50)).ToArray();
        var newHead = Enumerable.Range(0, 15).Select(_ => (float)random.NextDouble()).ToArray();
        SafetensorsWriter.RewriteWith(source, destination, new Dictionary<string, ReadOnlyMemory<float>>
        {
            ["z.lora_A.weight"] = newA,
            ["a.lora_B.weight"] = newB,
            ["head.weight"] = newHead,
        });

        var before = RawSafetensors.ParseFile(source);
        var after = RawSafetensors.ParseFile(destination);
        Assert.Equal(before.File.Length, after.File.Length);
        Assert.Equal(before.File.AsSpan(0, (int)before.DataStart).ToArray(), after.File.AsSpan(0, (int)after.DataStart).ToArray());
        var replaced = new[] { "z.lora_A.weight", "a.lora_B.weight", "head.weight" }
            .Select(n => before.Tensors[n]).Select(t => (Begin: before.DataStart + t.Begin, End: before.DataStart + t.End)).ToArray();
        for (long i = 0; i < before.File.Length; i++)
            if (!replaced.Any(r => i >= r.Begin && i < r.End))
                Assert.True(before.File[i] == after.File[i], $"byte {i} changed");

        Assert.Equal(RawSafetensors.HalfBytes(newA.Select(f => (double)f)), after.Bytes("z.lora_A.weight"));
        Assert.Equal(RawSafetensors.BFloat16Bytes(newB.Select(f => (double)f)), after.Bytes("a.lora_B.weight"));
        Assert.Equal(RawSafetensors.SingleBytes(newHead.Select(f => (double)f)), after.Bytes("head.weight"));
        Assert.NotEqual(before.Bytes("z.lora_A.weight"), after.Bytes("z.lora_A.weight"));
    }

    [Fact]
    public void RewriteWith_DoubleReplacements_RoundOnceToTheTensorDType()
    {
        string source = WriteMixed("source.safetensors");
        string destination = _temp.Sub("rewritten.safetensors");
        var values = Enumerable.Range(0, 24).Select(i => 1 + Math.ScaleB(1, -11) + Math.ScaleB(i + 1, -45)).ToArray();
        SafetensorsWriter.RewriteWith(source, destination, new Dictionary<string, ReadOnlyMemory<double>> { ["z.lora_A.weight"] = values });
        var after = RawSafetensors.ParseFile(destination);
        Assert.Equal(RawSafetensors.HalfBytes(values), after.Bytes("z.lora_A.weight"));
        Assert.All(RawSafetensors.Decode("F16", after.Bytes("z.lora_A.weight")), v => Assert.Equal(1 + Math.ScaleB(1, -10), v));
    }

    [Fact]
    public void RewriteWith_NoReplacements_IsABitIdenticalCopy()
    {
        string source = WriteMixed("source.safetensors");
        string destination = _temp.Sub("copy.safetensors");
        SafetensorsWriter.RewriteWith(source, destination, new Dictionary<string, ReadOnlyMemory<float>>());
        Assert.Equal(File.ReadAllBytes(source), File.ReadAllBytes(destination));
    }

    [Fact]
    public void RewriteWith_RejectsBadReplacements_AndLeavesNoDestination()
    {
        string source = WriteMixed("source.safetensors");
        string destination = _temp.Sub("out.safetensors");

        void Expect(string fragment, Dictionary<string, ReadOnlyMemory<float>> replacements)
        {
            var e = Assert.Throws<ArgumentException>(() => SafetensorsWriter.RewriteWith(source, destination, replacements));
            Assert.Contains(fragment, e.Message);
            Assert.False(File.Exists(destination));
        }

        Expect("no such tensor", new() { ["nope"] = new float[1] });
        Expect("has 24 elements", new() { ["z.lora_A.weight"] = new float[23] });
        Expect("I64", new() { ["position_ids"] = new float[3] });
        Expect("F64", new() { ["scalar"] = new float[1] });
        var nan = new float[24];
        nan[5] = float.NaN;
        Expect("element 5", new() { ["z.lora_A.weight"] = nan });
        var overflow = new float[24];
        overflow[7] = 70000f; // ∞ in F16
        Expect("not a finite F16", new() { ["z.lora_A.weight"] = overflow });

        File.WriteAllText(destination, "keep me");
        Assert.Throws<IOException>(() => SafetensorsWriter.RewriteWith(source, destination, new Dictionary<string, ReadOnlyMemory<float>>()));
        Assert.Equal("keep me", File.ReadAllText(destination));
        Assert.Throws<IOException>(() => SafetensorsWriter.RewriteWith(source, source, new Dictionary<string, ReadOnlyMemory<float>>()));
    }
}
