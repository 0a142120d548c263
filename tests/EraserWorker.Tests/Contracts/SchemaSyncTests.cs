using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using Json.Schema;

namespace EraserWorker.Tests.Contracts;

/// <summary>
/// Keeps the records, <see cref="ContractJson"/>, <see cref="RequestValidation"/> and the JSON Schemas of
/// <c>src/EraserWorker.Contracts/schemas</c> in agreement: any drift fails here.
/// </summary>
public sealed class SchemaSyncTests
{
    private static readonly Dictionary<Type, string> SchemaFiles = new()
    {
        [typeof(UnlearningRequested)] = "unlearning-requested.schema.json",
        [typeof(UnlearningCompleted)] = "unlearning-completed.schema.json",
        [typeof(UnlearningFailed)] = "unlearning-failed.schema.json",
        [typeof(AdapterVersionPublished)] = "adapter-version-published.schema.json",
    };

    private static readonly Lazy<Dictionary<Type, (JsonSchema Schema, JsonObject Json)>> Schemas = new(() =>
        SchemaFiles.ToDictionary(kv => kv.Key, kv =>
        {
            string path = Path.Combine(AppContext.BaseDirectory, "schemas", kv.Value);
            Assert.True(File.Exists(path), $"{path} is not copied to the output");
            string text = File.ReadAllText(path);
            return (JsonSchema.FromText(text), JsonNode.Parse(text)!.AsObject());
        }));

    private static readonly EvaluationOptions Evaluation = new() { OutputFormat = OutputFormat.List, RequireFormatValidation = true };

    private static (JsonSchema Schema, JsonObject Json) SchemaOf<T>() => Schemas.Value[typeof(T)];

    private static bool SchemaAccepts<T>(JsonNode? instance, out string errors)
    {
        var result = SchemaOf<T>().Schema.Evaluate(instance, Evaluation);
        errors = result.IsValid ? "" : string.Join("; ", (result.Details ?? []).Where(d => d.Errors is not null)
            .SelectMany(d => d.Errors!.Select(e => $"{d.InstanceLocation}: {e.Value}")));
        return result.IsValid;
    }

    public static IEnumerable<object[]> Samples()
    {
        yield return [new UnlearningRequested("req-1", "tenant-a/support-bot", UnlearningTasks.Remove, ["s1", "sample two", "ünïcödé 🙂"])];
        yield return [new UnlearningRequested("req-2", "bot", UnlearningTasks.ModifyQuery, ["s1"], "eraser:adapters/bot/replacements/r-20260101t000000z-0a1b2c3d")];
        yield return [new UnlearningRequested("req-3", "a.b/c_d-e", UnlearningTasks.CorrectResponse, ["x"], "eraser:adapters/a.b/c_d-e/replacements/fix1")];
        yield return [new UnlearningRequested("req-4", "bot", UnlearningTasks.CorrectResponse, ["x", "y"],
            Replacements: [new TextReplacement("x", "What is 2+2?", " 4"), new TextReplacement("y", "", "ünïcödé 🙂\nsecond line")])];
        yield return [new UnlearningCompleted("req-1", "tenant-a/support-bot", 3, "http://127.0.0.1:10000/devstoreaccount1/eraser/adapters/tenant-a/support-bot/versions/000003/",
            new string('a', 64), new DateTimeOffset(2026, 1, 2, 3, 4, 5, TimeSpan.Zero), new SolverSummary("direct", 1, 0.25, 1e-12, 0.0))];
        yield return [new UnlearningCompleted("r", "x", 1, "file:///data/adapters/x/versions/000001/", new string('0', 64), DateTimeOffset.UnixEpoch,
            new SolverSummary("cg", 57, 12.5, 3.2e-7, 0.01))];
        yield return [new UnlearningFailed("req-1", "tenant-a/support-bot", FailureCodes.UnknownSample, "Sample 's9' is not in the cache.")];
        yield return [new UnlearningFailed("", "", FailureCodes.InvalidRequest, "requestId is missing.")];
        yield return [new AdapterVersionPublished("tenant-a/support-bot", 4, "file:///data/adapters/tenant-a/support-bot/versions/000004/", new string('f', 64), ["req-1", "req-2"])];
    }

    [Theory]
    [MemberData(nameof(Samples))]
    public void Serialised_samples_are_valid_against_their_schema_and_round_trip(object message)
    {
        string json = JsonSerializer.Serialize(message, message.GetType(), ContractJson.Options);
        var node = JsonNode.Parse(json);
        string errors = (string)typeof(SchemaSyncTests).GetMethod(nameof(Check), BindingFlags.NonPublic | BindingFlags.Static)!
            .MakeGenericMethod(message.GetType()).Invoke(null, [node])!;
        Assert.True(errors.Length == 0, $"{json}\n{errors}");
        var back = JsonSerializer.Deserialize(json, message.GetType(), ContractJson.Options);
        Assert.Equal(json, JsonSerializer.Serialize(back, message.GetType(), ContractJson.Options));
        Assert.DoesNotContain("null", json);
    }

    private static string Check<T>(JsonNode? node) => SchemaAccepts<T>(node, out string errors) ? "" : errors + " ";

    [Theory]
    [InlineData(typeof(UnlearningRequested))]
    [InlineData(typeof(UnlearningCompleted))]
    [InlineData(typeof(UnlearningFailed))]
    [InlineData(typeof(AdapterVersionPublished))]
    public void Record_properties_match_the_schema_properties_and_required(Type type)
    {
        var schema = Schemas.Value[type].Json;
        AssertPropertiesMatch(type, schema, type.Name);
        if (type == typeof(UnlearningCompleted))
            AssertPropertiesMatch(typeof(SolverSummary), schema["$defs"]!["solverSummary"]!.AsObject(), nameof(SolverSummary));
        if (type == typeof(UnlearningRequested))
            AssertPropertiesMatch(typeof(TextReplacement), schema["$defs"]!["textReplacement"]!.AsObject(), nameof(TextReplacement));
    }

    private static void AssertPropertiesMatch(Type type, JsonObject schema, string what)
    {
        var nullability = new NullabilityInfoContext();
        var props = type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.Name != "EqualityContract").ToList();
        var names = props.Select(p => JsonNamingPolicy.CamelCase.ConvertName(p.Name)).Order(StringComparer.Ordinal).ToList();
        var schemaNames = schema["properties"]!.AsObject().Select(p => p.Key).Order(StringComparer.Ordinal).ToList();
        Assert.True(names.SequenceEqual(schemaNames), $"{what}: record has [{string.Join(", ", names)}], schema has [{string.Join(", ", schemaNames)}]");
        var required = props.Where(p => p.PropertyType.IsValueType ? Nullable.GetUnderlyingType(p.PropertyType) is null : nullability.Create(p).ReadState == NullabilityState.NotNull)
            .Select(p => JsonNamingPolicy.CamelCase.ConvertName(p.Name)).Order(StringComparer.Ordinal).ToList();
        var schemaRequired = schema["required"]!.AsArray().Select(n => (string)n!).Order(StringComparer.Ordinal).ToList();
        Assert.True(required.SequenceEqual(schemaRequired), $"{what}: non-nullable [{string.Join(", ", required)}], schema requires [{string.Join(", ", schemaRequired)}]");
        Assert.False((bool?)schema["additionalProperties"] ?? true, $"{what}: the schema must not allow additional properties");
    }

    [Fact]
    public void Schema_patterns_and_enums_are_the_constants_of_the_code()
    {
        var req = SchemaOf<UnlearningRequested>().Json;
        var defs = req["$defs"]!;
        Assert.Equal(RequestValidation.RequestIdPattern, (string?)defs["requestId"]!["pattern"]);
        Assert.Equal(RequestValidation.AdapterIdPattern, (string?)defs["adapterId"]!["pattern"]);
        Assert.Equal(RequestValidation.MaxAdapterIdLength, (int)defs["adapterId"]!["maxLength"]!);
        Assert.Equal(RequestValidation.MaxRequestIdLength, (int)defs["requestId"]!["maxLength"]!);
        Assert.Equal(RequestValidation.SampleIdPattern, (string?)defs["sampleId"]!["pattern"]);
        Assert.Equal(RequestValidation.ReplacementsUriPattern, (string?)defs["replacementsUri"]!["pattern"]);
        Assert.Equal(RequestValidation.MaxReplacementsUriLength, (int)defs["replacementsUri"]!["maxLength"]!);
        Assert.Equal(UnlearningTasks.All, req["properties"]!["task"]!["enum"]!.AsArray().Select(n => (string)n!));
        Assert.Equal(FailureCodes.All, SchemaOf<UnlearningFailed>().Json["properties"]!["code"]!["enum"]!.AsArray().Select(n => (string)n!));
        foreach (var (type, (_, json)) in Schemas.Value)
        {
            Assert.Equal("https://json-schema.org/draft/2020-12/schema", (string?)json["$schema"]);
            if (json["$defs"] is JsonObject d)
            {
                if (d["requestId"] is { } r)
                    Assert.Equal(RequestValidation.RequestIdPattern, (string?)r["pattern"]);
                if (d["adapterId"] is { } a)
                    Assert.Equal(RequestValidation.AdapterIdPattern, (string?)a["pattern"]);
                if (d["sha256"] is { } s)
                    Assert.Equal(RequestValidation.Sha256Pattern, (string?)s["pattern"]);
            }
        }
    }

    // ------------------------------------------------------------------ ids: validator and schema agree

    public static TheoryData<string, bool> AdapterIds => new()
    {
        { "a", true }, { "tenant-a/support-bot", true }, { "a.b_c-d/e/f", true }, { "...", true }, { "a/.x/b", true },
        { "x..y", true }, { "0", true }, { new string('a', 200), true }, { string.Join("/", Enumerable.Repeat("ab", 67)), true },
        { "", false }, { new string('a', 201), false }, { "A", false }, { "a b", false }, { "/a", false }, { "a/", false },
        { "a//b", false }, { ".", false }, { "..", false }, { "a/./b", false }, { "a/../b", false }, { "a/..", false },
        { "./a", false }, { "a\n", false }, { "a\\b", false }, { "ä", false }, { "a/b\n", false }, { "a:b", false },
    };

    public static TheoryData<string, bool> RequestIds => new()
    {
        { "r", true }, { "req-1", true }, { "7c9e6679-7425-40de-944b-e07fc1f90ae7", true }, { "a b", true }, { "~!@#$%^&*()", true },
        { new string('x', 128), true }, { "{\"quoted\"}", true },
        { "", false }, { new string('x', 129), false }, { " ", false }, { " lead", false }, { "trail ", false }, { "a\nb", false },
        { "a\n", false }, { "tab\t", false }, { "ü", false }, { "a\u007f", false }, { "\u0000", false },
    };

    public static TheoryData<string, bool> SampleIds => new()
    {
        { "s", true }, { "sample 1", true }, { "  spaces  ", true }, { "tab\there", true }, { "ünïcödé", true }, { "🙂", true },
        { new string('x', 256), true }, { string.Concat(Enumerable.Repeat("🙂", 256)), true }, { "/slashes/../ok", true },
        { "", false }, { new string('x', 257), false }, { string.Concat(Enumerable.Repeat("🙂", 257)), false }, { "a\nb", false },
        { "a\n", false }, { "\n", false }, { "a\rb", false }, { "a\r\n", false }, { "a\u2028b", false }, { "a\u2029", false },
        { "a\u0085", false }, { "a\vb", false }, { "a\fb", false },
    };

    private static JsonObject RequestWith(string? requestId = null, string? adapterId = null, string? sampleId = null) => new()
    {
        ["requestId"] = requestId ?? "req-1",
        ["adapterId"] = adapterId ?? "bot",
        ["task"] = "remove",
        ["sampleIds"] = new JsonArray(sampleId ?? "s1"),
    };

    [Theory]
    [MemberData(nameof(AdapterIds))]
    public void Adapter_ids_validator_and_schema_agree(string id, bool expected)
    {
        Assert.Equal(expected, RequestValidation.IsValidAdapterId(id));
        Assert.Equal(expected, SchemaAccepts<UnlearningRequested>(RequestWith(adapterId: id), out string errors));
        _ = errors;
    }

    [Theory]
    [MemberData(nameof(RequestIds))]
    public void Request_ids_validator_and_schema_agree(string id, bool expected)
    {
        Assert.Equal(expected, RequestValidation.IsValidRequestId(id));
        Assert.Equal(expected, SchemaAccepts<UnlearningRequested>(RequestWith(requestId: id), out _));
    }

    [Theory]
    [MemberData(nameof(SampleIds))]
    public void Sample_ids_validator_and_schema_agree(string id, bool expected)
    {
        Assert.Equal(expected, RequestValidation.IsValidSampleId(id));
        Assert.Equal(expected, SchemaAccepts<UnlearningRequested>(RequestWith(sampleId: id), out _));
    }

    /// <summary>
    /// Unpaired surrogates cannot travel in JSON text (a parser rejects them or turns them into U+FFFD, so a
    /// schema validator never sees one); the validator and the schema's pattern itself still reject them.
    /// </summary>
    [Fact]
    public void Unpaired_surrogates_are_rejected_by_the_validator_and_the_schema_pattern()
    {
        // Built in code: attribute arguments (InlineData) are stored as UTF-8 and would turn them into U+FFFD.
        string pattern = (string)SchemaOf<UnlearningRequested>().Json["$defs"]!["sampleId"]!["pattern"]!;
        foreach (string id in new[] { "\ud800", "a\udc00b", "\ud83d", "x\ude42" })
        {
            Assert.Equal(1, id.Count(char.IsSurrogate));
            Assert.False(RequestValidation.IsValidSampleId(id));
            Assert.DoesNotMatch(pattern, id);
            Assert.DoesNotMatch(new System.Text.RegularExpressions.Regex(pattern, System.Text.RegularExpressions.RegexOptions.ECMAScript), id);
        }
        Assert.True(RequestValidation.IsValidSampleId("\ud83d\ude42"));
    }

    // ------------------------------------------------------------------ whole requests

    public static TheoryData<string, bool> RequestBodies => new()
    {
        { """{"requestId":"r1","adapterId":"bot","task":"remove","sampleIds":["a","b"]}""", true },
        { """{"requestId":"r1","adapterId":"bot","task":"remove","sampleIds":["a"],"replacementsUri":null}""", true },
        { """{"requestId":"r1","adapterId":"bot","task":"modifyQuery","sampleIds":["a"],"replacementsUri":"eraser:adapters/bot/replacements/x1"}""", true },
        { """{"requestId":"r1","adapterId":"t/bot","task":"correctResponse","sampleIds":["a"],"replacementsUri":"eraser:adapters/t/bot/replacements/x1"}""", true },
        { """{"requestId":"r1","adapterId":"bot","task":"modifyQuery","sampleIds":["a"]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"modifyQuery","sampleIds":["a"],"replacementsUri":null}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"remove","sampleIds":["a"],"replacementsUri":"eraser:adapters/bot/replacements/x1"}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"modifyQuery","sampleIds":["a"],"replacementsUri":"eraser:adapters/bot/replacements/../x"}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"modifyQuery","sampleIds":["a"],"replacementsUri":"https://x/y"}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"delete","sampleIds":["a"]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"Remove","sampleIds":["a"]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"remove","sampleIds":[]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"remove","sampleIds":[""]}""", false },
        // Extension: text replacements (the id-set rule is the validator's alone; these cases agree).
        { """{"requestId":"r1","adapterId":"bot","task":"correctResponse","sampleIds":["a"],"replacements":[{"id":"a","prompt":"p","response":"r"}]}""", true },
        { """{"requestId":"r1","adapterId":"bot","task":"modifyQuery","sampleIds":["a","b"],"replacementsUri":null,"replacements":[{"id":"b","prompt":"","response":"r"},{"id":"a","prompt":"q","response":"s"}]}""", true },
        { """{"requestId":"r1","adapterId":"bot","task":"correctResponse","sampleIds":["a"],"replacementsUri":"eraser:adapters/bot/replacements/x1","replacements":null}""", true },
        { """{"requestId":"r1","adapterId":"bot","task":"correctResponse","sampleIds":["a"],"replacementsUri":"eraser:adapters/bot/replacements/x1","replacements":[{"id":"a","prompt":"p","response":"r"}]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"correctResponse","sampleIds":["a"],"replacements":null}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"correctResponse","sampleIds":["a"],"replacements":[]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"correctResponse","sampleIds":["a"],"replacements":[{"id":"a","prompt":"p","response":""}]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"correctResponse","sampleIds":["a\n"],"replacements":[{"id":"a\n","prompt":"p","response":"r"}]}""", false },
        { """{"requestId":"r1","adapterId":"bot","task":"remove","sampleIds":["a"],"replacements":[{"id":"a","prompt":"p","response":"r"}]}""", false },
    };

    [Theory]
    [MemberData(nameof(RequestBodies))]
    public void Whole_requests_validator_and_schema_agree(string json, bool expected)
    {
        Assert.Equal(expected, SchemaAccepts<UnlearningRequested>(JsonNode.Parse(json), out string errors));
        var request = ContractJson.Deserialize<UnlearningRequested>(json);
        var problems = RequestValidation.Validate(request, maxSampleIds: 100);
        Assert.True(expected == (problems.Count == 0), $"validator: [{string.Join(" | ", problems)}]; schema: {errors}");
    }
}
