using System.Text.Json.Nodes;
using EraserWorker.Tests.Infrastructure;
using static EraserWorker.Cli.Tests.CliHarness;

namespace EraserWorker.Cli.Tests;

/// <summary>The command tree, and configuration read like the worker's: settings file, <c>--config</c>, environment.</summary>
[Collection(CliCollection.Name)]
public sealed class CliConfigurationTests : IDisposable
{
    private readonly TempDirectory _temp = new("eraser-cli-config");

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Help_lists_the_operator_commands()
    {
        var root = Run("--help");
        Assert.Equal(0, root.Exit);
        foreach (var command in new[] { "unlearn", "bench", "adapters", "replacements", "submit" })
            Assert.Matches($@"(?m)^\s+{command}\s", root.Out);

        var adapters = Run("adapters", "--help");
        Assert.Equal(0, adapters.Exit);
        foreach (var command in new[] { "register", "show", "download" })
            Assert.Matches($@"(?m)^\s+{command}\s", adapters.Out);
        Assert.Contains("--config", adapters.Out);

        var replacements = Run("replacements", "--help");
        Assert.Matches(@"(?m)^\s+upload\s", replacements.Out);

        var submit = Run("submit", "--help");
        foreach (var option in new[] { "--adapter-id", "--task", "--sample", "--replacements-uri", "--request-id", "--wait", "--timeout", "--config" })
            Assert.Contains(option, submit.Out);
    }

    [Fact]
    public async Task Environment_variables_configure_the_store_like_the_worker_and_override_the_settings_file()
    {
        string root = Path.Combine(_temp.Path, "store");
        string adapter = _temp.Sub("adapter"), cache = Path.Combine(_temp.Path, "cache");
        CliFixtures.WriteAdapter(adapter, seed: 5);
        CliFixtures.WriteCache(cache, CliFixtures.Parameters(), CliFixtures.Ids(4), seed: 6);
        string settings = WriteSettings(_temp.Path, new JsonObject { ["Storage"] = new JsonObject { ["Kind"] = "FileSystem", ["Root"] = root } });
        Assert.Equal(0, Run("adapters", "register", "--id", "env/test", "--adapter", adapter, "--cache", cache, "--config", settings).Exit);

        // Only the environment says where the store is (the child runs in an empty folder).
        string work = _temp.Sub("work");
        var byEnvironment = await RunProcessAsync(work, new Dictionary<string, string?>
        {
            ["Eraser__Storage__Kind"] = "FileSystem",
            ["Eraser__Storage__Root"] = root,
        }, "adapters", "show", "--id", "env/test", "--json");
        Assert.True(byEnvironment.Exit == 0, byEnvironment.ToString());
        Assert.Equal("env/test", (string?)JsonNode.Parse(byEnvironment.Out)!["adapterId"]);

        // The environment overrides --config, as it overrides appsettings.json in the worker.
        string elsewhere = WriteSettings(_temp.Path, new JsonObject { ["Storage"] = new JsonObject { ["Kind"] = "FileSystem", ["Root"] = Path.Combine(_temp.Path, "empty") } });
        var overridden = await RunProcessAsync(work, new Dictionary<string, string?> { ["Eraser__Storage__Root"] = root },
            "adapters", "show", "--id", "env/test", "--config", elsewhere);
        Assert.True(overridden.Exit == 0, overridden.ToString());
        Assert.Contains("head       version 0", overridden.Out);

        var invalid = await RunProcessAsync(work, new Dictionary<string, string?> { ["Eraser__Storage__Kind"] = "AzureBlob" },
            "adapters", "show", "--id", "env/test");
        Assert.Equal(1, invalid.Exit);
        Assert.Equal("eraser: invalid storage configuration: Eraser:Storage:Kind AzureBlob needs exactly one of Eraser:Storage:ConnectionString and Eraser:Storage:ServiceUri.",
            Assert.Single(invalid.ErrLines));
        Assert.Empty(invalid.Out);
    }

    [Fact]
    public void Invalid_settings_fail_with_one_line_before_any_work()
    {
        string adapter = _temp.Sub("adapter"), cache = Path.Combine(_temp.Path, "cache");
        CliFixtures.WriteAdapter(adapter, seed: 5);
        CliFixtures.WriteCache(cache, CliFixtures.Parameters(), CliFixtures.Ids(4), seed: 6);
        string[] Register(string config) => ["adapters", "register", "--id", "a", "--adapter", adapter, "--cache", cache, "--config", config];

        var missing = Run(Register(Path.Combine(_temp.Path, "nope.json")));
        Assert.Equal(1, missing.Exit);
        Assert.Contains("nope.json' does not exist", Assert.Single(missing.ErrLines));

        string malformed = Path.Combine(_temp.Path, "malformed.json");
        File.WriteAllText(malformed, "{ \"Eraser\": { \"Storage\": ");
        var notJson = Run(Register(malformed));
        Assert.Equal(1, notJson.Exit);
        Assert.Contains("is not valid JSON", Assert.Single(notJson.ErrLines));

        var container = Run(Register(WriteSettings(_temp.Path, new JsonObject
        {
            ["Storage"] = new JsonObject { ["Kind"] = "AzureBlob", ["ConnectionString"] = "UseDevelopmentStorage=true", ["Container"] = "Not_Valid" },
        })));
        Assert.Equal(1, container.Exit);
        Assert.StartsWith("eraser: invalid storage configuration: Eraser:Storage:Container must be 3–63 characters", Assert.Single(container.ErrLines));

        var kind = Run(Register(WriteSettings(_temp.Path, new JsonObject { ["Storage"] = new JsonObject { ["Kind"] = "Tape" } })));
        Assert.Equal(1, kind.Exit);
        Assert.Contains("'Tape' at 'Eraser:Storage:Kind'", Assert.Single(kind.ErrLines));

        // A read-only command never creates a folder store that is not there.
        string absent = Path.Combine(_temp.Path, "absent");
        var show = Run("adapters", "show", "--id", "a", "--config",
            WriteSettings(_temp.Path, new JsonObject { ["Storage"] = new JsonObject { ["Kind"] = "FileSystem", ["Root"] = absent } }));
        Assert.Equal(1, show.Exit);
        Assert.Contains("does not exist", Assert.Single(show.ErrLines));
        Assert.False(Directory.Exists(absent));
    }
}
