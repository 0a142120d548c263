using System.Text.Json;
using EraserWorker.Contracts;

namespace EraserWorker.Tests.Contracts;

public sealed class ContractsTests
{
    [Fact]
    public void Exchange_names_are_those_of_the_spec()
    {
        Assert.Equal("eraser.unlearning-requested", ExchangeNames.UnlearningRequested);
        Assert.Equal("eraser.unlearning-completed", ExchangeNames.UnlearningCompleted);
        Assert.Equal("eraser.unlearning-failed", ExchangeNames.UnlearningFailed);
        Assert.Equal("eraser.adapter-version-published", ExchangeNames.AdapterVersionPublished);
        Assert.Equal(4, ExchangeNames.All.Distinct().Count());
    }

    [Fact]
    public void Message_types_have_a_namespace_for_masstransit()
    {
        foreach (var t in new[] { typeof(UnlearningRequested), typeof(UnlearningCompleted), typeof(UnlearningFailed), typeof(AdapterVersionPublished), typeof(SolverSummary) })
            Assert.Equal("EraserWorker.Contracts", t.Namespace);
    }

    [Fact]
    public void Json_is_camel_case_and_omits_an_absent_replacements_uri()
    {
        string json = ContractJson.Serialize(new UnlearningRequested("r1", "bot", UnlearningTasks.Remove, ["a"]));
        Assert.Equal("""{"requestId":"r1","adapterId":"bot","task":"remove","sampleIds":["a"]}""", json);
        var back = ContractJson.Deserialize<UnlearningRequested>("""{"RequestId":"r1","adapterId":"bot","task":"remove","sampleIds":["a"],"extra":1}""");
        Assert.Equal("r1", back.RequestId);
        Assert.Null(back.ReplacementsUri);
    }

    [Theory]
    [InlineData("""{"adapterId":"bot","task":"remove","sampleIds":["a"]}""")]
    [InlineData("""{"requestId":null,"adapterId":"bot","task":"remove","sampleIds":["a"]}""")]
    [InlineData("""{"requestId":"r","adapterId":"bot","task":"remove"}""")]
    [InlineData("""{"requestId":"r","adapterId":"bot","task":"remove","sampleIds":"a"}""")]
    [InlineData("null")]
    [InlineData("[]")]
    public void Malformed_bodies_throw_json_exceptions(string json)
    {
        Assert.ThrowsAny<JsonException>(() => ContractJson.Deserialize<UnlearningRequested>(json));
    }

    [Fact]
    public void Completion_round_trips_with_its_solver_summary()
    {
        var m = new UnlearningCompleted("r", "a/b", 2, "file:///x/", new string('e', 64), new DateTimeOffset(2026, 5, 6, 7, 8, 9, TimeSpan.FromHours(2)),
            new SolverSummary("cg", 10, 1.5, 1e-9, 0.125));
        string json = ContractJson.Serialize(m);
        Assert.Contains("\"solver\":{\"name\":\"cg\",\"iterations\":10,\"seconds\":1.5,\"relativeResidual\":1E-09,\"damping\":0.125}", json);
        Assert.Equal(m, ContractJson.Deserialize<UnlearningCompleted>(json));
    }

    [Fact]
    public void Validate_reports_every_problem()
    {
        var bad = new UnlearningRequested(" ", "A//b", "delete", ["ok", "bad\n", ""], "eraser:adapters/other/replacements/x");
        var problems = RequestValidation.Validate(bad, maxSampleIds: 2);
        Assert.Contains(problems, p => p.StartsWith("requestId"));
        Assert.Contains(problems, p => p.StartsWith("adapterId"));
        Assert.Contains(problems, p => p.StartsWith("task"));
        Assert.Contains(problems, p => p.Contains("at most 2"));
        Assert.Contains(problems, p => p.StartsWith("sampleIds[1]") && p.Contains("\\u000a"));
        Assert.Contains(problems, p => p.StartsWith("sampleIds[2]"));
        Assert.Empty(RequestValidation.Validate(new UnlearningRequested("r", "bot", UnlearningTasks.Remove, ["a"]), 1));
        var foreign = new UnlearningRequested("r", "bot", UnlearningTasks.ModifyQuery, ["a"], "eraser:adapters/other/replacements/x");
        Assert.Contains(RequestValidation.Validate(foreign, 10), p => p.Contains("names adapter 'other'"));
        Assert.Single(RequestValidation.Validate(null, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => RequestValidation.Validate(foreign, 0));
    }

    [Fact]
    public void Text_replacements_must_name_exactly_the_sample_ids_once_with_texts_within_the_limit()
    {
        static UnlearningRequested With(string[] ids, params TextReplacement?[] texts) =>
            new("r", "bot", UnlearningTasks.CorrectResponse, ids, Replacements: texts!);
        static IReadOnlyList<string> Check(UnlearningRequested request, int maxText = 100) => RequestValidation.Validate(request, 10, maxText);

        Assert.Empty(Check(With(["a", "b"], new("b", "", "y"), new("a", "p", "x"))));
        Assert.Contains(Check(With(["a", "b"], new TextReplacement("a", "p", "x"))), p => p.Contains("no sample for sampleIds 'b'"));
        Assert.Contains(Check(With(["a"], new("a", "p", "x"), new("c", "p", "x"))), p => p.Contains("names 'c', not in sampleIds"));
        Assert.Contains(Check(With(["a"], new("a", "p", "x"), new("a", "q", "y"))), p => p.Contains("names 'a' more than once"));
        Assert.Contains(Check(With(["a"], new TextReplacement("a\n", "p", "x"))), p => p.StartsWith("replacements[0].id"));
        Assert.Contains(Check(With(["a"], new TextReplacement("a", null!, "x"))), p => p.StartsWith("replacements[0].prompt"));
        Assert.Contains(Check(With(["a"], new TextReplacement("a", "p", ""))), p => p.StartsWith("replacements[0].response"));
        Assert.Contains(Check(With(["a"], new TextReplacement("a", "p", null!))), p => p.StartsWith("replacements[0].response"));
        Assert.Contains(Check(With(["a"], [null])), p => p.Contains("replacements[0] is missing"));
        Assert.Contains(Check(With(["a"])), p => p.Contains("at least one sample"));
        Assert.Contains(Check(With(["a"], new TextReplacement("a", new string('p', 60), new string('r', 41)))), p => p.Contains("101 characters of text; at most 100"));
        Assert.Empty(Check(With(["a"], new TextReplacement("a", new string('p', 60), new string('r', 40)))));
        // Exactly one of replacementsUri and replacements for modifyQuery / correctResponse; neither for remove.
        var text = new TextReplacement("a", "p", "x");
        Assert.Contains(Check(new("r", "bot", UnlearningTasks.ModifyQuery, ["a"], "eraser:adapters/bot/replacements/x1", [text])), p => p.Contains("not both"));
        Assert.Contains(Check(new("r", "bot", UnlearningTasks.ModifyQuery, ["a"])), p => p.Contains("is required for task 'modifyQuery'"));
        Assert.Contains(Check(new("r", "bot", UnlearningTasks.Remove, ["a"], Replacements: [text])), p => p.Contains("replacements must be absent for task 'remove'"));
        // Wire form: camelCase, absent when null.
        Assert.Equal("""{"requestId":"r","adapterId":"bot","task":"correctResponse","sampleIds":["a"],"replacements":[{"id":"a","prompt":"p","response":"x"}]}""",
            ContractJson.Serialize(With(["a"], text)));
    }

    [Theory]
    [InlineData("eraser:adapters/bot/replacements/x1", "bot", "x1")]
    [InlineData("eraser:adapters/a/replacements/b/replacements/c", "a/replacements/b", "c")]
    public void Replacements_uris_parse_from_the_end(string uri, string adapterId, string name)
    {
        Assert.True(RequestValidation.TryParseReplacementsUri(uri, out var a, out var n));
        Assert.Equal((adapterId, name), (a, n));
        Assert.Equal(uri, RequestValidation.FormatReplacementsUri(adapterId, name));
    }

    [Theory]
    [InlineData("eraser:adapters/bot/replacements/")]
    [InlineData("eraser:adapters//replacements/x")]
    [InlineData("eraser:adapters/../replacements/x")]
    [InlineData("eraser:adapters/bot/replacements/X")]
    [InlineData("eraser:/adapters/bot/replacements/x")]
    [InlineData("eraser:adapters/bot/replacements/x\n")]
    [InlineData("adapters/bot/replacements/x")]
    public void Malformed_replacements_uris_are_rejected(string uri)
    {
        Assert.False(RequestValidation.TryParseReplacementsUri(uri, out _, out _));
    }
}
