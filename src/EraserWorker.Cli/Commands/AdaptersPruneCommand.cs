using System.CommandLine;
using System.Text.Json.Nodes;
using EraserWorker.Cli.Operator;
using EraserWorker.Cli.Output;
using EraserWorker.Storage;
using EraserWorker.Storage.Versions;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser adapters prune --id ID [--dry-run] [--json]</c>: removes what dead writers left behind
/// (<see cref="AdapterStore.PruneAsync"/>): partial versions whose claim is gone or expired and whose files are older than
/// <c>Eraser:Storage:VersionClaimTimeout</c>, and expired claims of complete versions. Complete versions are never touched.</summary>
public static class AdaptersPruneCommand
{
    public static Command Create(Option<string?> config)
    {
        var id = AdaptersCommand.IdOption();
        var dryRun = new Option<bool>("--dry-run") { Description = "Only list what would be removed." };
        var json = new Option<bool>("--json") { Description = "Print the result as one JSON object." };
        var command = new Command("prune",
            "Remove partial versions and stale claims left by crashed writers (never a complete version; never one a live writer may still finish).")
        {
            id, dryRun, json,
        };
        command.SetAction((parse, cancellation) => OperatorRun.RunAsync(parse, cancellation, async io =>
        {
            string adapterId = parse.GetValue(id)!;
            AdaptersCommand.CheckAdapterId(adapterId);
            bool dry = parse.GetValue(dryRun);
            using var handle = OperatorSettings.OpenStore(OperatorSettings.Load(parse.GetValue(config)), mustExist: true);
            io.Status($"Store: {handle.Location}{(dry ? " (dry run: nothing is deleted)" : "")}");
            var report = await handle.Store.PruneAsync(adapterId, dry, cancellation);
            if (parse.GetValue(json))
            {
                static JsonArray Entries(IEnumerable<PruneEntry> entries) => new(entries.Select(e => (JsonNode)new JsonObject
                {
                    ["version"] = e.Version,
                    ["what"] = e.What,
                    ["reason"] = e.Reason,
                    ["blobs"] = new JsonArray(e.Blobs.Select(b => (JsonNode)b).ToArray()),
                }).ToArray());
                io.Out.WriteLine(OperatorJson.Line(new JsonObject
                {
                    ["adapterId"] = adapterId,
                    ["head"] = report.Head,
                    ["dryRun"] = dry,
                    ["removed"] = Entries(report.Removed),
                    ["kept"] = Entries(report.Kept),
                }));
            }
            else
            {
                string verb = dry ? "would remove" : "removed";
                foreach (var e in report.Removed)
                    io.Out.WriteLine($"{verb} {e.Version:D6}: {e.What}, {e.Blobs.Count} blob(s) ({e.Reason})");
                foreach (var e in report.Kept)
                    io.Out.WriteLine($"kept {e.Version:D6}: {e.What}, {e.Blobs.Count} blob(s) ({e.Reason})");
                io.Out.WriteLine($"{adapterId}: head {report.Head}; {report.Removed.Count} leftover(s) {verb}, {report.Kept.Count} kept");
            }
            return 0;
        }));
        return command;
    }
}
