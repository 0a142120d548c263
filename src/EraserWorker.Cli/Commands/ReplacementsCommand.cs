using System.CommandLine;
using EraserWorker.Cli.Operator;
using EraserWorker.Cli.Output;
using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Storage;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser replacements upload</c> (SPEC §6): store a replacement set and print its replacementsUri.</summary>
public static class ReplacementsCommand
{
    public static Command Create()
    {
        var config = OperatorSettings.CreateConfigOption();
        var command = new Command("replacements", "Replacement sets (corrected samples' gradient rows) of a registered adapter.") { config };
        command.Subcommands.Add(Upload(config));
        return command;
    }

    private static Command Upload(Option<string?> config)
    {
        var id = AdaptersCommand.IdOption();
        var cache = new Option<string>("--cache")
        {
            Description = "Replacement set folder: eraser.gradcache/v1 whose ids name the training samples it replaces.",
            Required = true,
        };
        var command = new Command("upload",
            "Validate a replacement set against the adapter's registered gradient cache, upload it under a fresh name and print only its replacementsUri.")
        {
            id, cache,
        };
        command.SetAction((parse, cancellation) => OperatorRun.RunAsync(parse, cancellation, async io =>
        {
            string adapterId = parse.GetValue(id)!;
            string dir = parse.GetValue(cache)!;
            AdaptersCommand.CheckAdapterId(adapterId);
            using var set = InputValidation.OpenCache(dir, "replacement set");

            using var handle = OperatorSettings.OpenStore(OperatorSettings.Load(parse.GetValue(config)), mustExist: true);
            var store = handle.Store;
            io.Status($"Store: {handle.Location}");
            if (!await store.IsRegisteredAsync(adapterId, cancellation))
                throw new AdapterNotFoundException(adapterId);
            var registered = await AdapterInfo.ReadCacheManifestAsync(store, adapterId, cancellation)
                ?? throw new InvalidDataException($"Adapter '{adapterId}' has no gradient cache in the store (its {StoredFileNames.CacheIndex} is missing).");
            if (InputValidation.ParameterDifference(set.Parameters, registered.Parameters) is { } difference)
                throw new UnlearningException(FailureCodes.InvalidCache, $"Replacement set '{dir}' does not fit adapter '{adapterId}': {difference}.");
            // Ids a set corrects must be training samples: refused here, not by the worker later.
            InputValidation.SamplesKnown(set.Ids, await RegisteredIdsAsync(store, adapterId, registered, cancellation));

            var summary = LocalInputs.ScanRows(set, $"replacement set '{dir}'", io, cancellation);
            io.Status($"Valid: {summary.Samples:N0} replacement row(s), P = {summary.Parameters:N0}, {summary.DType}{(summary.Curvature ? " with curvature rows" : "")}");

            using var staging = new LocalInputs.Staging();
            var (staged, ignored) = staging.Cache("replacements", dir, set.Manifest);
            LocalInputs.ReportIgnored(io, "replacement set", ignored);
            string name = AdapterStore.NewReplacementName();
            io.Status($"Uploading as replacement set '{name}' of {adapterId}");
            string uri = await store.UploadReplacementsAsync(adapterId, name, staged, cancellation);
            io.Out.WriteLine(uri);
            return 0;
        }));
        return command;
    }

    /// <summary>The registered cache's sample ids, from its ids files (each verified against the base manifest).</summary>
    private static async Task<HashSet<string>> RegisteredIdsAsync(AdapterStore store, string adapterId, GradientCacheManifest registered,
        CancellationToken cancellation)
    {
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var shard in registered.Shards)
        {
            var bytes = await store.ReadCacheFileAsync(adapterId, shard.Ids, cancellation)
                ?? throw new InvalidDataException($"The registered gradient cache of '{adapterId}' lacks its ids file {shard.Ids}.");
            foreach (var line in System.Text.Encoding.UTF8.GetString(bytes).Split('\n'))
                if (line.Length > 0)
                    ids.Add(line);
        }
        return ids;
    }
}
