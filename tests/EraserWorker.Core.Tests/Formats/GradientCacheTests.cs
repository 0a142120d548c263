using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;
using EraserWorker.Core.Tests.TestSupport;

namespace EraserWorker.Core.Tests.Formats;

public sealed class GradientCacheTests : IDisposable
{
    // θ's order as the cache defines it (B before A: not an adapter file's alphabetical order).
    private static readonly ParameterSpec[] Parameters =
    [
        new("base_model.model.layers.0.q_proj.lora_B.weight", [4, 2]),
        new("base_model.model.layers.0.q_proj.lora_A.weight", [2, 3]),
        new("base_model.model.score.weight", [3]),
    ];

    private const int P = 4 * 2 + 2 * 3 + 3;

    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private sealed record Sample(string Id, double[] Gradient, double[] Curvature);

    private static Sample[] Samples(int count, int seed = 1)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(i => new Sample(
            i % 5 == 2 ? $"sample-ü-{i} with spaces" : $"s{i:D4}",
            Enumerable.Range(0, P).Select(_ => random.NextDouble() * 20 - 10).ToArray(),
            Enumerable.Range(0, P).Select(_ => random.NextDouble() * 2 - 1).ToArray())).ToArray();
    }

    private string Write(string name, Sample[] samples, string dtype, bool curvature, int rowsPerShard, bool asDouble = false, JsonObject? extra = null)
    {
        string folder = _temp.Sub(name);
        using var writer = GradientCacheWriter.Create(folder, Parameters, l2: 0.25, dtype, curvature, rowsPerShard, extra);
        foreach (var s in samples)
        {
            if (asDouble)
                writer.Append(s.Id, s.Gradient, curvature ? s.Curvature : default);
            else
                writer.Append(s.Id, s.Gradient.Select(v => (float)v).ToArray(), curvature ? s.Curvature.Select(v => (float)v).ToArray() : default);
        }
        Assert.Equal(samples.Length, writer.RowCount);
        writer.Complete();
        return folder;
    }

    /// <summary>What a row must read back as: the reference encoding of the appended values, decoded.</summary>
    private static double[] Stored(string dtype, double[] values, bool viaFloat) =>
        RawSafetensors.Decode(dtype, RawSafetensors.Encode(dtype, viaFloat ? values.Select(v => (double)(float)v) : values));

    [Theory]
    [InlineData("F32", false, 4)]
    [InlineData("F32", true, 4)]
    [InlineData("F16", false, 3)]
    [InlineData("F16", true, 5)]
    [InlineData("BF16", false, 7)]
    [InlineData("BF16", true, 1)]
    [InlineData("F16", true, 100)]
    public void WriterThenReader_RoundTrips(string dtype, bool curvature, int rowsPerShard)
    {
        var samples = Samples(13);
        string folder = Write("cache", samples, dtype, curvature, rowsPerShard, extra: new JsonObject { ["producer"] = "tests", ["adapterSha256"] = "ab" });

        using var cache = GradientCache.Open(folder);
        Assert.Equal(Parameters, cache.Parameters);
        Assert.Equal(P, cache.ParameterCount);
        Assert.Equal(13, cache.RowCount);
        Assert.Equal(curvature, cache.HasCurvature);
        Assert.Equal(dtype, cache.StorageDType);
        Assert.Equal(0.25, cache.L2);
        Assert.Equal(samples.Select(s => s.Id), cache.Ids);
        Assert.Equal("tests", (string?)cache.Manifest.Extra["producer"]);
        Assert.Equal((13 + rowsPerShard - 1) / rowsPerShard, cache.Manifest.Shards.Count);
        for (int i = 0; i < samples.Length; i++)
        {
            Assert.True(cache.TryGetRow(samples[i].Id, out int row));
            Assert.Equal(i, row);
        }
        Assert.False(cache.TryGetRow("absent", out _));

        // Every window of rows, including ones that cross shard boundaries.
        for (int first = 0; first < samples.Length; first++)
        {
            for (int count = 0; first + count <= samples.Length; count += 3)
            {
                var g = new float[count * P];
                var c = new float[count * P];
                cache.ReadRows(CacheMatrix.Gradients, first, count, g);
                cache.ReadRows(CacheMatrix.Curvature, first, count, c);
                for (int r = 0; r < count; r++)
                {
                    var s = samples[first + r];
                    Assert.Equal(Stored(dtype, s.Gradient, viaFloat: true), g.AsSpan(r * P, P).ToArray().Select(v => (double)v));
                    // Without curvature rows, cᵢ = gᵢ.
                    Assert.Equal(Stored(dtype, curvature ? s.Curvature : s.Gradient, viaFloat: true), c.AsSpan(r * P, P).ToArray().Select(v => (double)v));
                }
            }
        }
        Assert.Equal(Stored(dtype, samples[7].Gradient, true), cache.ReadRowDouble(CacheMatrix.Gradients, 7));
        Assert.Equal(new[] { (0, 5), (5, 5), (10, 3) }, cache.Chunks(5).ToArray());
    }

    [Fact]
    public void Writer_ProducesTheSpecifiedFiles_VerifiedIndependently()
    {
        var samples = Samples(5);
        string folder = Write("cache", samples, "BF16", curvature: true, rowsPerShard: 3, extra: new JsonObject { ["loss"] = "ce" });

        Assert.Equal(new[] { "cache.json", "shard-00000.ids", "shard-00000.safetensors", "shard-00001.ids", "shard-00001.safetensors" },
            Directory.GetFiles(folder).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Empty(Directory.GetDirectories(_temp.Path, ".cache*"));

        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "cache.json")))!.AsObject();
        Assert.Equal("eraser.gradcache/v1", (string?)manifest["format"]);
        Assert.Equal(0.25, (double)manifest["l2"]!);
        Assert.Equal("ce", (string?)manifest["loss"]);
        var parameters = manifest["parameters"]!.AsArray();
        Assert.Equal(Parameters.Select(p => p.Name), parameters.Select(p => (string)p!["name"]!));
        Assert.Equal(new long[] { 4, 2 }, parameters[0]!["shape"]!.AsArray().Select(d => (long)d!));
        var shards = manifest["shards"]!.AsArray();
        Assert.Equal("shard-00001.safetensors", (string?)shards[1]!["file"]);
        Assert.Equal("shard-00001.ids", (string?)shards[1]!["ids"]);

        int row = 0;
        foreach (var (file, rows) in new[] { ("shard-00000", 3), ("shard-00001", 2) })
        {
            var parsed = RawSafetensors.ParseFile(Path.Combine(folder, file + ".safetensors"));
            Assert.Equal(0, parsed.HeaderLength % 8);
            Assert.Equal("BF16", parsed.Tensors["gradients"].DType);
            Assert.Equal(new long[] { rows, P }, parsed.Tensors["gradients"].Shape);
            Assert.Equal(new long[] { rows, P }, parsed.Tensors["curvature"].Shape);
            Assert.Equal(parsed.File.Length, parsed.DataStart + parsed.Tensors["curvature"].End);
            var g = RawSafetensors.Decode("BF16", parsed.Bytes("gradients"));
            var c = RawSafetensors.Decode("BF16", parsed.Bytes("curvature"));
            for (int r = 0; r < rows; r++)
            {
                Assert.Equal(Stored("BF16", samples[row + r].Gradient, true), g.AsSpan(r * P, P).ToArray());
                Assert.Equal(Stored("BF16", samples[row + r].Curvature, true), c.AsSpan(r * P, P).ToArray());
            }
            var idsBytes = File.ReadAllBytes(Path.Combine(folder, file + ".ids"));
            Assert.NotEqual(0xEF, idsBytes[0]); // no BOM
            Assert.Equal(string.Concat(samples.Skip(row).Take(rows).Select(s => s.Id + "\n")), Encoding.UTF8.GetString(idsBytes));
            row += rows;
        }
    }

    [Theory]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void DoubleAppend_RoundsOnceFromDouble(string dtype)
    {
        var samples = Samples(4, seed: 9);
        samples[0].Gradient[0] = 1 + Math.ScaleB(1, -11) + Math.ScaleB(1, -40); // above the F16 tie: must round up
        samples[0].Gradient[1] = 1 + Math.ScaleB(1, -8) + Math.ScaleB(1, -40);  // above the BF16 tie
        string folder = Write("cache", samples, dtype, curvature: false, rowsPerShard: 2, asDouble: true);
        using var cache = GradientCache.Open(folder);
        for (int i = 0; i < samples.Length; i++)
            Assert.Equal(Stored(dtype, samples[i].Gradient, viaFloat: false), cache.ReadRowDouble(CacheMatrix.Gradients, i));
    }

    [Fact]
    public void ReadRows_IsSafeForConcurrentReaders()
    {
        var samples = Samples(40);
        string folder = Write("cache", samples, "F16", curvature: true, rowsPerShard: 6);
        using var cache = GradientCache.Open(folder);
        var expected = new float[40 * P];
        cache.ReadRows(CacheMatrix.Curvature, 0, 40, expected);
        Parallel.For(0, 200, new ParallelOptions { MaxDegreeOfParallelism = 4 }, k =>
        {
            int first = k % 37, count = 1 + k % 4;
            var buffer = new float[count * P + 5];
            cache.ReadRows(CacheMatrix.Curvature, first, count, buffer);
            Assert.Equal(expected.AsSpan(first * P, count * P).ToArray(), buffer.AsSpan(0, count * P).ToArray());
        });
    }

    [Fact]
    public void ReadRows_ChecksItsArguments()
    {
        string folder = Write("cache", Samples(3), "F32", false, 2);
        using var cache = GradientCache.Open(folder);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ReadRows(CacheMatrix.Gradients, 2, 2, new float[2 * P]));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ReadRows(CacheMatrix.Gradients, -1, 1, new float[P]));
        Assert.Throws<ArgumentException>(() => cache.ReadRows(CacheMatrix.Gradients, 0, 2, new float[2 * P - 1]));
        cache.Dispose();
        Assert.Throws<ObjectDisposedException>(() => cache.ReadRows(CacheMatrix.Gradients, 0, 1, new float[P]));
    }

    [Fact]
    public void Manifest_PreservesUnknownFields_AndWritesCamelCase()
    {
        string json = """
            {"format":"eraser.gradcache/v1","producer":{"name":"x","version":2},
             "parameters":[{"name":"a","shape":[2,3]}],"l2":1.5,
             "shards":[{"file":"s0.safetensors","ids":"s0.ids"}],"adapterSha256":"00ff"}
            """;
        var manifest = GradientCacheManifest.Parse(Encoding.UTF8.GetBytes(json));
        Assert.Equal(6, manifest.ParameterCount);
        Assert.Equal(1.5, manifest.L2);
        Assert.Equal(new ShardRef("s0.safetensors", "s0.ids"), manifest.Shards[0]);
        var written = JsonNode.Parse(manifest.ToUtf8Json())!.AsObject();
        Assert.Equal(new[] { "format", "parameters", "l2", "shards", "producer", "adapterSha256" }, written.Select(p => p.Key));
        Assert.Equal(2, (int)written["producer"]!["version"]!);
        Assert.Equal("00ff", (string?)written["adapterSha256"]);
        var again = GradientCacheManifest.Parse(manifest.ToUtf8Json());
        Assert.Equal(manifest.ToUtf8Json(), again.ToUtf8Json());
    }

    [Theory]
    [InlineData("{\"format\":\"eraser.gradcache/v1\",\"l2\":1,\"l2\":2,\"parameters\":[{\"name\":\"a\",\"shape\":[1]}],\"shards\":[{\"file\":\"s\",\"ids\":\"i\"}]}", "not valid JSON")]
    [InlineData("[]", "not a JSON object")]
    [InlineData("{\"format\":\"eraser.gradcache/v1\",\"l2\":0,\"parameters\":[{\"name\":\"a\",\"shape\":[1]}],\"shards\":[]}", "'shards' is empty")]
    [InlineData("{\"format\":\"eraser.gradcache/v1\",\"l2\":0,\"parameters\":[{\"name\":\"a\",\"shape\":[1]}],\"shards\":[{\"file\":\"s\",\"ids\":\"s\"}]}", "listed twice")]
    [InlineData("{\"format\":\"eraser.gradcache/v1\",\"parameters\":[{\"name\":\"a\",\"shape\":[1]}],\"shards\":[{\"file\":\"s\",\"ids\":\"i\"}]}", "missing 'l2'")]
    [InlineData("{\"format\":\"eraser.gradcache/v1\",\"l2\":0,\"parameters\":[{\"shape\":[1]}],\"shards\":[{\"file\":\"s\",\"ids\":\"i\"}]}", "no (non-empty) 'name'")]
    public void Manifest_RejectsMalformedJson(string json, string fragment)
    {
        var e = Assert.Throws<GradientCacheException>(() => GradientCacheManifest.Parse(Encoding.UTF8.GetBytes(json)));
        Assert.StartsWith("cache.json: ", e.Message);
        Assert.Contains(fragment, e.Message);
    }

    // ------------------------------------------------------------------ rejections on Open (nothing written)

    private string ValidCache(string name = "cache", bool curvature = true) =>
        Write(name, Samples(7), "F16", curvature, rowsPerShard: 3);

    private static void EditManifest(string folder, Action<JsonObject> edit)
    {
        string path = Path.Combine(folder, "cache.json");
        var obj = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(obj);
        File.WriteAllText(path, obj.ToJsonString());
    }

    private static void ReplaceShard(string folder, string file, params (string Name, string DType, long[] Shape)[] tensors)
    {
        string path = Path.Combine(folder, file);
        File.Delete(path);
        SafetensorsWriter.WriteFile(path, tensors.Select(t =>
            (t.Name, t.DType, (IReadOnlyList<long>)t.Shape,
             (ReadOnlyMemory<byte>)new byte[t.Shape.Aggregate(1L, (a, b) => a * b) * DTypeConversion.ElementSize(t.DType)])).ToList());
    }

    private static void ExpectRejected(string folder, params string[] fragments)
    {
        var before = RawSafetensors.Snapshot(folder);
        var siblings = Directory.GetFileSystemEntries(Path.GetDirectoryName(folder)!).Order().ToArray();
        var e = Assert.Throws<GradientCacheException>(() => GradientCache.Open(folder));
        Assert.StartsWith($"Gradient cache '{folder}'", e.Message);
        foreach (string fragment in fragments)
            Assert.Contains(fragment, e.Message);
        RawSafetensors.AssertSameSnapshot(before, RawSafetensors.Snapshot(folder));
        Assert.Equal(siblings, Directory.GetFileSystemEntries(Path.GetDirectoryName(folder)!).Order().ToArray());
    }

    [Fact]
    public void Open_RejectsManifestProblems()
    {
        string folder = ValidCache();
        using (GradientCache.Open(folder)) { }

        EditManifest(folder, o => o["format"] = "eraser.gradcache/v2");
        ExpectRejected(folder, "cache.json", "unsupported format \"eraser.gradcache/v2\"");
        EditManifest(folder, o => o.Remove("format"));
        ExpectRejected(folder, "cache.json", "missing 'format'");
        EditManifest(folder, o => o["format"] = "eraser.gradcache/v1");

        JsonNode? parameters = null;
        EditManifest(folder, o => { parameters = o["parameters"]!.DeepClone(); o["parameters"] = new JsonArray(); });
        ExpectRejected(folder, "'parameters' is empty");
        EditManifest(folder, o => o["parameters"] = parameters!.DeepClone());
        EditManifest(folder, o => o["parameters"]!.AsArray().Add(o["parameters"]![0]!.DeepClone()));
        ExpectRejected(folder, $"parameter '{Parameters[0].Name}' is listed twice");
        EditManifest(folder, o => o["parameters"] = parameters!.DeepClone());

        foreach (var badShape in new[] { "[0, 2]", "[-1, 2]", "[1.5, 2]", "\"4x2\"" })
        {
            EditManifest(folder, o => o["parameters"]![0]!["shape"] = JsonNode.Parse(badShape));
            ExpectRejected(folder, Parameters[0].Name, "shape");
        }
        EditManifest(folder, o => o["parameters"]![0]!["shape"] = new JsonArray(4, 2));

        EditManifest(folder, o => o["l2"] = -1);
        ExpectRejected(folder, "'l2'");
        EditManifest(folder, o => o["l2"] = 0.25);

        File.WriteAllText(Path.Combine(folder, "cache.json.bak"), File.ReadAllText(Path.Combine(folder, "cache.json")));
        File.WriteAllText(Path.Combine(folder, "cache.json"), "{ not json");
        ExpectRejected(folder, "cache.json", "not valid JSON");
        File.Delete(Path.Combine(folder, "cache.json"));
        ExpectRejected(folder, "cache.json", "not found");
        File.Move(Path.Combine(folder, "cache.json.bak"), Path.Combine(folder, "cache.json"));

        EditManifest(folder, o => o["shards"]![0]!["file"] = "../elsewhere.safetensors");
        ExpectRejected(folder, "plain file name");
    }

    [Fact]
    public void Open_RejectsShardProblems()
    {
        string folder = ValidCache();
        string shard1 = Path.Combine(folder, "shard-00001.safetensors");
        byte[] original = File.ReadAllBytes(shard1);
        void Restore() => File.WriteAllBytes(shard1, original);

        File.Delete(shard1);
        ExpectRejected(folder, "shard-00001.safetensors", "missing");
        Restore();

        ReplaceShard(folder, "shard-00001.safetensors", ("curvature", "F16", [3, P]));
        ExpectRejected(folder, "shard-00001.safetensors", "no 'gradients' tensor");

        ReplaceShard(folder, "shard-00001.safetensors", ("gradients", "F16", [3 * P]), ("curvature", "F16", [3, P]));
        ExpectRejected(folder, "shard-00001.safetensors", "2-D [rows, P]");

        ReplaceShard(folder, "shard-00001.safetensors", ("gradients", "F16", [3, P + 1]), ("curvature", "F16", [3, P + 1]));
        ExpectRejected(folder, "shard-00001.safetensors", $"{P + 1} columns", $"P = {P}");

        ReplaceShard(folder, "shard-00001.safetensors", ("gradients", "F16", [3, P]));
        ExpectRejected(folder, "shard-00001.safetensors", "no 'curvature' tensor");

        ReplaceShard(folder, "shard-00001.safetensors", ("gradients", "F16", [3, P]), ("curvature", "F16", [2, P]));
        ExpectRejected(folder, "shard-00001.safetensors", "'curvature' has shape [2, 17]");

        ReplaceShard(folder, "shard-00001.safetensors", ("gradients", "F32", [3, P]), ("curvature", "F32", [3, P]));
        ExpectRejected(folder, "shard-00001.safetensors", "stores F32", "F16");

        ReplaceShard(folder, "shard-00001.safetensors", ("gradients", "I64", [3, P]), ("curvature", "I64", [3, P]));
        ExpectRejected(folder, "expected F32, F16 or BF16");

        ReplaceShard(folder, "shard-00001.safetensors", ("gradients", "F16", [4, P]), ("curvature", "F16", [4, P]));
        ExpectRejected(folder, "shard-00001.ids", "has 3 ids but shard-00001.safetensors has 4 rows");

        File.WriteAllBytes(shard1, original[..^2]);
        ExpectRejected(folder, "shard-00001.safetensors", "out of bounds");
        Restore();
        using (GradientCache.Open(folder)) { }

        // Curvature in a later shard only.
        string plain = ValidCache("plain", curvature: false);
        ReplaceShard(plain, "shard-00002.safetensors", ("gradients", "F16", [1, P]), ("curvature", "F16", [1, P]));
        ExpectRejected(plain, "shard-00002.safetensors", "has a 'curvature' tensor but shard-00000.safetensors has none");
    }

    [Fact]
    public void Open_RejectsIdsProblems()
    {
        string folder = ValidCache();
        string ids0 = Path.Combine(folder, "shard-00000.ids"), ids1 = Path.Combine(folder, "shard-00001.ids");
        byte[] original0 = File.ReadAllBytes(ids0), original1 = File.ReadAllBytes(ids1);
        var lines1 = Encoding.UTF8.GetString(original1).Split('\n')[..3];

        File.Delete(ids1);
        ExpectRejected(folder, "shard-00001.ids", "missing");

        File.WriteAllText(ids1, $"{lines1[0]}\n{lines1[1]}\n");
        ExpectRejected(folder, "shard-00001.ids", "has 2 ids but shard-00001.safetensors has 3 rows");

        File.WriteAllText(ids1, $"{lines1[0]}\n\n{lines1[2]}\n");
        ExpectRejected(folder, "shard-00001.ids", "line 2", "empty");

        File.WriteAllText(ids1, $"{lines1[0]}\r\n{lines1[1]}\r\n{lines1[2]}\r\n");
        ExpectRejected(folder, "shard-00001.ids", "line 1", "'\\r'");

        File.WriteAllText(ids1, $"{lines1[0]}\n{lines1[1]}\n{lines1[0]}\n");
        ExpectRejected(folder, "shard-00001.ids", "line 3", $"duplicate sample id '{lines1[0]}'", "line 1 of shard-00001.ids");

        string firstOfShard0 = Encoding.UTF8.GetString(original0).Split('\n')[0];
        File.WriteAllText(ids1, $"{lines1[0]}\n{firstOfShard0}\n{lines1[2]}\n");
        ExpectRejected(folder, "shard-00001.ids", "line 2", $"duplicate sample id '{firstOfShard0}'", "line 1 of shard-00000.ids");

        File.WriteAllBytes(ids1, [.. Encoding.UTF8.GetBytes("a\n"), 0xC3, 0x28, (byte)'\n', (byte)'c', (byte)'\n']);
        ExpectRejected(folder, "shard-00001.ids", "not valid UTF-8");

        File.WriteAllText(ids1, $"{lines1[0]}\n{new string('x', 257)}\n{lines1[2]}\n");
        ExpectRejected(folder, "shard-00001.ids", "line 2", "257 characters");

        // Without the final newline is fine.
        File.WriteAllText(ids1, string.Join('\n', lines1));
        using var cache = GradientCache.Open(folder);
        Assert.Equal(lines1, cache.Ids.Skip(3).Take(3));
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void ReadRows_RejectsNonFiniteValues_NamingTheSample(string dtype)
    {
        // A shard written by a foreign producer with a NaN in row 1 and +∞ in the curvature of row 2.
        string folder = _temp.Sub("foreign-" + dtype);
        Directory.CreateDirectory(folder);
        var g = new double[3 * P];
        var c = new double[3 * P];
        g[1 * P + 9] = double.NaN;
        c[2 * P + 16] = double.PositiveInfinity;
        SafetensorsWriter.WriteFile(Path.Combine(folder, "part.safetensors"),
        [
            ("gradients", dtype, [3, P], RawSafetensors.Encode(dtype, g)),
            ("curvature", dtype, [3, P], RawSafetensors.Encode(dtype, c)),
        ]);
        File.WriteAllText(Path.Combine(folder, "part.ids"), "alpha\nbeta\ngamma\n");
        new GradientCacheManifest(Parameters, 0, [new ShardRef("part.safetensors", "part.ids")]).Save(Path.Combine(folder, "cache.json"));

        using var cache = GradientCache.Open(folder);
        cache.ReadRows(CacheMatrix.Gradients, 0, 1, new float[P]);
        cache.ReadRows(CacheMatrix.Curvature, 0, 2, new float[2 * P]);
        var e = Assert.Throws<GradientCacheException>(() => cache.ReadRows(CacheMatrix.Gradients, 0, 3, new float[3 * P]));
        Assert.Contains("sample 'beta'", e.Message);
        Assert.Contains("NaN", e.Message);
        Assert.Contains($"parameter '{Parameters[1].Name}' element 1", e.Message);
        var e2 = Assert.Throws<GradientCacheException>(() => cache.ReadRowDouble(CacheMatrix.Curvature, 2));
        Assert.Contains("curvature of sample 'gamma'", e2.Message);
        Assert.Contains($"parameter '{Parameters[2].Name}' element 2", e2.Message);
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void Raw_reads_return_the_stored_bytes_of_rows_and_row_segments_across_shards(string dtype)
    {
        var samples = Samples(11, seed: 4);
        string folder = Write("raw-" + dtype, samples, dtype, curvature: true, rowsPerShard: 4);
        using var cache = GradientCache.Open(folder);
        int size = DTypeConversion.ElementSize(dtype);
        Assert.Equal(size, cache.ElementSize);
        Assert.Equal(P * size, cache.RowBytes);
        // Rows 2..9 span three shards; decoding the raw bytes gives exactly what ReadRows converts.
        var raw = new byte[8 * P * size];
        cache.ReadRowsRaw(CacheMatrix.Curvature, 2, 8, raw);
        var decoded = new float[8 * P];
        DTypeConversion.ToSingle(dtype, raw, decoded);
        var expected = new float[8 * P];
        cache.ReadRows(CacheMatrix.Curvature, 2, 8, expected);
        Assert.Equal(expected, decoded);
        Assert.Equal(RawSafetensors.Encode(dtype, samples[5].Curvature.Select(v => (double)(float)v)), raw.AsSpan(3 * P * size, P * size).ToArray());

        var segment = new byte[6 * size];
        cache.ReadRowSegmentRaw(CacheMatrix.Gradients, 9, 7, 6, segment);
        var whole = new byte[P * size];
        cache.ReadRowsRaw(CacheMatrix.Gradients, 9, 1, whole);
        Assert.Equal(whole.AsSpan(7 * size, 6 * size).ToArray(), segment);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ReadRowSegmentRaw(CacheMatrix.Gradients, 9, P - 2, 3, segment));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ReadRowsRaw(CacheMatrix.Gradients, 10, 2, raw));
    }

    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    public void Raw_reads_reject_non_finite_values_naming_the_sample(string dtype)
    {
        string folder = _temp.Sub("foreign-raw-" + dtype);
        Directory.CreateDirectory(folder);
        var g = new double[3 * P];
        var c = new double[3 * P];
        c[2 * P + 16] = double.NegativeInfinity;
        g[1 * P + 9] = double.NaN;
        SafetensorsWriter.WriteFile(Path.Combine(folder, "part.safetensors"),
        [
            ("gradients", dtype, [3, P], RawSafetensors.Encode(dtype, g)),
            ("curvature", dtype, [3, P], RawSafetensors.Encode(dtype, c)),
        ]);
        File.WriteAllText(Path.Combine(folder, "part.ids"), "alpha\nbeta\ngamma\n");
        new GradientCacheManifest(Parameters, 0, [new ShardRef("part.safetensors", "part.ids")]).Save(Path.Combine(folder, "cache.json"));

        using var cache = GradientCache.Open(folder);
        int size = DTypeConversion.ElementSize(dtype);
        var buffer = new byte[3 * P * size];
        cache.ReadRowsRaw(CacheMatrix.Curvature, 0, 2, buffer);
        var e = Assert.Throws<GradientCacheException>(() => cache.ReadRowsRaw(CacheMatrix.Curvature, 1, 2, buffer));
        Assert.Contains("curvature of sample 'gamma'", e.Message);
        Assert.Contains("−∞", e.Message);
        Assert.Contains($"parameter '{Parameters[2].Name}' element 2", e.Message);
        cache.ReadRowSegmentRaw(CacheMatrix.Gradients, 1, 0, 9, buffer);
        var e2 = Assert.Throws<GradientCacheException>(() => cache.ReadRowSegmentRaw(CacheMatrix.Gradients, 1, 5, 6, buffer));
        Assert.Contains("gradients of sample 'beta'", e2.Message);
        Assert.Contains($"parameter '{Parameters[1].Name}' element 1", e2.Message);
    }

    // ------------------------------------------------------------------ writer rejections

    [Fact]
    public void Writer_RejectsBadRows_AndStaysUsable()
    {
        string folder = _temp.Sub("cache");
        using var writer = GradientCacheWriter.Create(folder, Parameters, 0, "F16", withCurvature: true, rowsPerShard: 2);
        var ok = new float[P];
        writer.Append("a", ok, ok);

        void Expect(string fragment, Action append) => Assert.Contains(fragment, Assert.Throws<ArgumentException>(append).Message);
        Expect("empty", () => writer.Append("", ok, ok));
        Expect("line break", () => writer.Append("x\ny", ok, ok));
        Expect("carriage return", () => writer.Append("x\r", ok, ok));
        Expect("257 characters", () => writer.Append(new string('é', 257), ok, ok));
        Expect("Duplicate sample id 'a'", () => writer.Append("a", ok, ok));
        Expect("P = 17", () => writer.Append("b", new float[P - 1], ok));
        Expect("curvature", () => writer.Append("b", ok, default));
        var nan = new float[P];
        nan[12] = float.NaN;
        Expect($"parameter '{Parameters[1].Name}' element 4", () => writer.Append("b", nan, ok));
        var big = new float[P];
        big[0] = 70000f; // finite in F32, ∞ in F16
        Expect("not a finite F16", () => writer.Append("b", ok, big));
        Expect("not a finite F16", () => writer.Append("b", new double[P], Enumerable.Repeat(1e5, P).ToArray()));

        writer.Append(new string('é', 256), ok, ok);
        writer.Append("b", ok, ok);
        writer.Complete();
        using var cache = GradientCache.Open(folder);
        Assert.Equal(new[] { "a", new string('é', 256), "b" }, cache.Ids);
        Assert.Throws<InvalidOperationException>(() => writer.Append("c", ok, ok));
    }

    [Fact]
    public void Writer_WithoutCurvature_RejectsCurvatureRows()
    {
        using var writer = GradientCacheWriter.Create(_temp.Sub("cache"), Parameters, 0);
        Assert.Throws<ArgumentException>(() => writer.Append("a", new float[P], new float[P]));
    }

    [Fact]
    public void Writer_LeavesNothing_WhenNotCompleted()
    {
        string folder = _temp.Sub("cache");
        using (var writer = GradientCacheWriter.Create(folder, Parameters, 0, "BF16", true, rowsPerShard: 2))
        {
            for (int i = 0; i < 5; i++)
                writer.Append($"id{i}", new float[P], new float[P]);
            Assert.False(Directory.Exists(folder));
            Assert.Throws<ArgumentException>(() => writer.Append("id0", new float[P], new float[P]));
        }
        Assert.False(Directory.Exists(folder));
        Assert.Empty(Directory.GetFileSystemEntries(_temp.Path));

        using (var writer = GradientCacheWriter.Create(folder, Parameters, 0))
            Assert.Throws<InvalidOperationException>(writer.Complete); // no rows
        Assert.Empty(Directory.GetFileSystemEntries(_temp.Path));
    }

    [Fact]
    public void Writer_FailedComplete_LeavesTheTargetAloneAndNoTemporaryFolder()
    {
        string target = _temp.Sub("cache");
        using var writer = GradientCacheWriter.Create(target, Parameters, 0, "F16", withCurvature: true, rowsPerShard: 4);
        for (int i = 0; i < 6; i++)
            writer.Append($"id{i}", new float[P], new float[P]);
        // Someone else fills the target meanwhile.
        Directory.CreateDirectory(target);
        File.WriteAllText(Path.Combine(target, "theirs.txt"), "theirs");
        Assert.Contains("not empty", Assert.Throws<IOException>(writer.Complete).Message);
        Assert.Equal(new[] { "theirs.txt" }, Directory.GetFiles(target).Select(Path.GetFileName));
        Assert.Equal(new[] { target }, Directory.GetFileSystemEntries(_temp.Path));
        Assert.Throws<InvalidOperationException>(() => writer.Append("id9", new float[P], new float[P]));
    }

    [Fact]
    public void Writer_ValidatesItsSettings_AndRefusesNonEmptyTargets()
    {
        string occupied = _temp.Sub("occupied");
        Directory.CreateDirectory(occupied);
        File.WriteAllText(Path.Combine(occupied, "x"), "x");
        Assert.Contains("not empty", Assert.Throws<IOException>(() => GradientCacheWriter.Create(occupied, Parameters, 0)).Message);

        string target = _temp.Sub("cache");
        Assert.Throws<ArgumentException>(() => GradientCacheWriter.Create(target, Parameters, 0, "F64"));
        Assert.Throws<ArgumentException>(() => GradientCacheWriter.Create(target, Parameters, double.NaN));
        Assert.Throws<ArgumentException>(() => GradientCacheWriter.Create(target, [], 0));
        Assert.Throws<ArgumentException>(() => GradientCacheWriter.Create(target, [Parameters[0], Parameters[0]], 0));
        Assert.Throws<ArgumentException>(() => GradientCacheWriter.Create(target, Parameters, 0, extra: new JsonObject { ["l2"] = 3 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => GradientCacheWriter.Create(target, Parameters, 0, rowsPerShard: 0));
        Assert.Throws<ArgumentException>(() => new ParameterSpec("x", [2, 0]));
        Assert.Equal(new[] { occupied }, Directory.GetFileSystemEntries(_temp.Path));

        // An existing empty folder is accepted.
        Directory.CreateDirectory(target);
        using var writer = GradientCacheWriter.Create(target, Parameters, 0);
        writer.Append("only", new double[P]);
        writer.Complete();
        using var cache = GradientCache.Open(target);
        Assert.Equal(1, cache.RowCount);
    }
}
