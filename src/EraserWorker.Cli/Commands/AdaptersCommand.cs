using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Cli.Operator;
using EraserWorker.Cli.Output;
using EraserWorker.Contracts;
using EraserWorker.Core.Formats;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Storage;
using EraserWorker.Storage.Manifests;
using EraserWorker.Storage.Versions;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser adapters register | show | download | prune</c> (SPEC §6) against the configured adapter store.</summary>
public static class AdaptersCommand
{
    public static Command Create()
    {
        var config = OperatorSettings.CreateConfigOption();
        var command = new Command("adapters", "Register, inspect and download adapters in the adapter store (Eraser:Storage, as configured for the worker).")
        {
            config,
        };
        command.Subcommands.Add(Register(config));
        command.Subcommands.Add(Show(config));
        command.Subcommands.Add(Download(config));
        command.Subcommands.Add(AdaptersPruneCommand.Create(config));
        return command;
    }

    internal static Option<string> IdOption() => new("--id")
    {
        Description = "Adapter id: '/'-separated segments of [a-z0-9._-] (e.g. tenant-a/support-bot).",
        Required = true,
    };

    internal static void CheckAdapterId(string id)
    {
        if (!RequestValidation.IsValidAdapterId(id))
            throw new CliFailure($"invalid adapter id '{id}': expected 1–{RequestValidation.MaxAdapterIdLength} characters of [a-z0-9._-] in '/'-separated segments, none empty, '.' or '..'.");
        if (!AdapterStore.IsStorableAdapterId(id))
            throw new CliFailure($"invalid adapter id '{id}': it uses a reserved segment name ({string.Join(", ", AdapterStore.ReservedSegments)}) after its first segment.");
    }

    // -------------------------------------------------------------------------------------------- register

    private static Command Register(Option<string?> config)
    {
        var id = IdOption();
        var adapter = new Option<string>("--adapter") { Description = "PEFT adapter folder (adapter_config.json + adapter_model.safetensors).", Required = true };
        var cache = new Option<string>("--cache") { Description = "The adapter's gradient cache folder (eraser.gradcache/v1).", Required = true };
        var model = new Option<string?>("--model")
        {
            Description = "Optional: the base model folder (Hugging Face: config.json, model.safetensors or shards + index, tokenizer.json / tokenizer.model) " +
                          "the adapter and cache were made with. Stored with the adapter, it lets requests carry text replacements.",
        };
        var training = new Option<string?>("--training-data")
        {
            Description = "Optional, with --model: the adapter's training samples (JSONL, ids = the cache's ids), stored beside the model for the " +
                          "iterated update; a removed sample's text is deleted from the store when its removal is published.",
        };
        var json = new Option<bool>("--json") { Description = "Print the result as one JSON object." };
        var command = new Command("register", "Validate an adapter and its gradient cache (and base model), then store them as version 0 of a new adapter.")
        {
            id, adapter, cache, model, training, json,
        };
        command.SetAction((parse, cancellation) => OperatorRun.RunAsync(parse, cancellation, async io =>
        {
            string adapterId = parse.GetValue(id)!;
            string adapterDir = parse.GetValue(adapter)!;
            string cacheDir = parse.GetValue(cache)!;
            string? modelDir = parse.GetValue(model);
            string? trainingFile = parse.GetValue(training);
            CheckAdapterId(adapterId);
            if (trainingFile is not null && modelDir is null)
                throw new CliFailure("--training-data needs --model: the texts are read with the model's tokenizer.");
            using var handle = OperatorSettings.OpenStore(OperatorSettings.Load(parse.GetValue(config)));
            var store = handle.Store;
            io.Status($"Store: {handle.Location}");
            if (await store.IsRegisteredAsync(adapterId, cancellation))
                throw new AdapterAlreadyRegisteredException(adapterId);

            io.Status($"Validating adapter '{adapterDir}' against gradient cache '{cacheDir}'");
            var summary = LocalInputs.ValidateRegistration(adapterDir, cacheDir, io, cancellation);
            io.Status($"Valid: {summary.Samples:N0} samples, P = {summary.Parameters:N0} in {summary.Tensors} tensor(s), {summary.DType}{(summary.Curvature ? " with curvature rows" : "")}, l2 = {summary.L2:G6}");
            ModelSummary? modelSummary = null;
            if (modelDir is not null)
            {
                io.Status($"Validating base model '{modelDir}' against the adapter and the cache");
                modelSummary = ModelInputs.Validate(modelDir, adapterDir, cacheDir);
                io.Status($"Valid: {modelSummary.ModelType}, {modelSummary.Layers} layers, vocabulary {modelSummary.VocabSize:N0}, tokenizer {modelSummary.Tokenizer}; {modelSummary.Files.Count} file(s), {modelSummary.Bytes:N0} bytes");
            }
            int? trainingSamples = null;
            if (trainingFile is not null)
            {
                io.Status($"Validating the training texts '{trainingFile}' against the model and the cache");
                trainingSamples = ModelInputs.ValidateTrainingData(modelDir!, cacheDir, trainingFile);
                io.Status($"Valid: {trainingSamples:N0} training samples, the cache's");
            }

            using var staging = new LocalInputs.Staging();
            var (stagedAdapter, ignoredAdapter) = staging.Adapter(adapterDir);
            var (stagedCache, ignoredCache) = staging.Cache("cache", cacheDir, GradientCacheManifest.Load(Path.Combine(cacheDir, GradientCacheManifest.FileName)));
            LocalInputs.ReportIgnored(io, "adapter", ignoredAdapter);
            LocalInputs.ReportIgnored(io, "cache", ignoredCache);
            string? stagedModel = null;
            if (modelSummary is not null)
            {
                (stagedModel, var ignoredModel) = staging.Model(modelDir!, modelSummary.Files);
                LocalInputs.ReportIgnored(io, "model", ignoredModel);
            }
            io.Status($"Uploading the gradient cache{(stagedModel is null ? "" : ", the base model")} and version 0 of '{adapterId}'");
            var version = await store.RegisterAsync(adapterId, new RegistrationFiles(stagedAdapter, stagedCache, stagedModel, trainingFile), cancellation);

            if (parse.GetValue(json))
            {
                io.Out.WriteLine(OperatorJson.Line(new JsonObject
                {
                    ["adapterId"] = adapterId,
                    ["version"] = version.Version,
                    ["uri"] = version.Uri,
                    ["sha256"] = version.Sha256,
                    ["samples"] = summary.Samples,
                    ["parameters"] = summary.Parameters,
                    ["model"] = modelSummary is null ? null : new JsonObject
                    {
                        ["modelType"] = modelSummary.ModelType,
                        ["tokenizer"] = modelSummary.Tokenizer,
                        ["files"] = new JsonArray(modelSummary.Files.Select(f => (JsonNode)f).ToArray()),
                        ["bytes"] = modelSummary.Bytes,
                    },
                    ["trainingSamples"] = trainingSamples,
                }));
            }
            else
            {
                io.Out.WriteLine($"Registered {adapterId} version {version.Version}");
                io.Out.WriteLine($"  uri     {version.Uri}");
                io.Out.WriteLine($"  sha256  {version.Sha256}");
                if (modelSummary is not null)
                    io.Out.WriteLine($"  model   {modelSummary.ModelType}, {modelSummary.Files.Count} file(s) stored with the adapter (text replacements enabled)");
                if (trainingSamples is not null)
                    io.Out.WriteLine($"  texts   {trainingSamples:N0} training samples stored with the model (the iterated update)");
            }
            return 0;
        }));
        return command;
    }

    // -------------------------------------------------------------------------------------------- show

    private static Command Show(Option<string?> config)
    {
        var id = IdOption();
        var json = new Option<bool>("--json") { Description = "Print one JSON object." };
        var command = new Command("show", "Show an adapter's head version, its versions and the head manifest's summary.") { id, json };
        command.SetAction((parse, cancellation) => OperatorRun.RunAsync(parse, cancellation, async io =>
        {
            string adapterId = parse.GetValue(id)!;
            CheckAdapterId(adapterId);
            using var handle = OperatorSettings.OpenStore(OperatorSettings.Load(parse.GetValue(config)), mustExist: true);
            var info = await AdapterInfo.ReadAsync(handle.Store, adapterId, cancellation);
            if (parse.GetValue(json))
                io.Out.WriteLine(OperatorJson.Line(info.ToJson()));
            else
                info.Print(io.Out);
            return 0;
        }));
        return command;
    }

    // -------------------------------------------------------------------------------------------- download

    private static Command Download(Option<string?> config)
    {
        var id = IdOption();
        var version = new Option<int?>("--version") { Description = "Version to download (default: the head)." };
        var output = new Option<string>("--out") { Description = "Folder for the files (must not exist or be empty).", Required = true };
        var json = new Option<bool>("--json") { Description = "Print the result as one JSON object." };
        var command = new Command("download", "Download a version of an adapter (default the head) and verify each file's SHA-256 against its manifest.")
        {
            id, version, output, json,
        };
        command.SetAction((parse, cancellation) => OperatorRun.RunAsync(parse, cancellation, async io =>
        {
            string adapterId = parse.GetValue(id)!;
            string outDir = parse.GetValue(output)!;
            int? wanted = parse.GetValue(version);
            CheckAdapterId(adapterId);
            if (wanted is < 0 or > AdapterStore.MaxVersion)
                throw new CliFailure($"--version must be between 0 and {AdapterStore.MaxVersion} (got {wanted}).");
            string target = Path.GetFullPath(outDir.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
            CheckEmptyTarget(target, outDir);

            using var handle = OperatorSettings.OpenStore(OperatorSettings.Load(parse.GetValue(config)), mustExist: true);
            var store = handle.Store;
            int number = wanted ?? (await store.GetHeadAsync(adapterId, cancellation) ?? throw new AdapterNotFoundException(adapterId)).Version;
            if (wanted is not null && !await store.IsRegisteredAsync(adapterId, cancellation))
                throw new AdapterNotFoundException(adapterId);
            io.Status($"Downloading {adapterId} version {number} from {handle.Location}");

            string parent = Path.GetDirectoryName(target) ?? throw new CliFailure($"'{outDir}' has no parent folder.");
            Directory.CreateDirectory(parent);
            string temporary = Path.Combine(parent, $".{Path.GetFileName(target)}.tmp-{Guid.NewGuid():N}");
            AdapterVersionRef downloaded;
            List<string> files;
            int verified;
            try
            {
                downloaded = await store.DownloadVersionAsync(adapterId, number, temporary, cancellation);
                (files, verified) = VerifyAgainstManifest(temporary, adapterId, number);
                CheckEmptyTarget(target, outDir);
                if (Directory.Exists(target))
                    Directory.Delete(target);
                Directory.Move(temporary, target);
            }
            finally
            {
                if (Directory.Exists(temporary))
                    Directory.Delete(temporary, recursive: true);
            }
            io.Status($"Verified the SHA-256 of {verified} file(s) against manifest.json");

            if (parse.GetValue(json))
            {
                io.Out.WriteLine(OperatorJson.Line(new JsonObject
                {
                    ["adapterId"] = adapterId,
                    ["version"] = number,
                    ["path"] = target,
                    ["uri"] = downloaded.Uri,
                    ["sha256"] = downloaded.Sha256,
                    ["files"] = new JsonArray(files.Select(f => (JsonNode)f).ToArray()),
                }));
            }
            else
            {
                io.Out.WriteLine($"Downloaded {adapterId} version {number} to {target}");
                io.Out.WriteLine($"  sha256  {downloaded.Sha256}");
                io.Out.WriteLine($"  files   {string.Join(", ", files)}");
            }
            return 0;
        }));
        return command;
    }

    private static void CheckEmptyTarget(string target, string shown)
    {
        if (File.Exists(target))
            throw new CliFailure($"'{shown}' is a file; --out must be a folder that does not exist or is empty.");
        if (Directory.Exists(target) && Directory.EnumerateFileSystemEntries(target).Any())
            throw new CliFailure($"the output folder '{shown}' exists and is not empty.");
    }

    /// <summary>Re-hashes the downloaded files from disk against the manifest's <c>files</c> entries (the store already
    /// compared while downloading; this proves what is on disk). The weights must be listed.</summary>
    private static (List<string> Files, int Verified) VerifyAgainstManifest(string dir, string adapterId, int version)
    {
        var files = Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(dir, f).Replace(Path.DirectorySeparatorChar, '/'))
            .Order(StringComparer.Ordinal).ToList();
        string manifestPath = Path.Combine(dir, StoredFileNames.Manifest);
        if (!File.Exists(manifestPath))
            throw new InvalidDataException($"Version {version} of adapter '{adapterId}' has no {StoredFileNames.Manifest}.");
        var manifest = AdapterManifest.Parse(File.ReadAllBytes(manifestPath), adapterId, version);
        if (manifest.WeightsSha256 is null)
            throw new InvalidDataException($"The manifest of version {version} of adapter '{adapterId}' has no digest for {StoredFileNames.AdapterWeights}, so the download cannot be verified.");
        int verified = 0;
        foreach (var (name, entry) in manifest.Files)
        {
            string path = Path.Combine(dir, name);
            if (!File.Exists(path))
                throw new InvalidDataException($"Version {version} of adapter '{adapterId}' lacks {name}, which its manifest lists.");
            string actual = FileHash.Sha256OfFile(path);
            if (!string.Equals(actual, entry.Sha256, StringComparison.OrdinalIgnoreCase))
                throw new InvalidDataException($"{name} of version {version} of adapter '{adapterId}' has SHA-256 {actual}, but its manifest says {entry.Sha256}.");
            verified++;
        }
        return (files, verified);
    }
}

/// <summary>What <c>adapters show</c> reports: the head, the versions, and the head manifest's summary.</summary>
internal sealed record AdapterInfo(
    AdapterHead Head, AdapterVersionRef Version, IReadOnlyList<int> Versions, AdapterManifest Manifest, AdapterManifest Base, int AppliedRequests,
    GradientCacheManifest? Cache)
{
    public static async Task<AdapterInfo> ReadAsync(AdapterStore store, string adapterId, CancellationToken cancellation)
    {
        var head = await store.GetHeadAsync(adapterId, cancellation) ?? throw new AdapterNotFoundException(adapterId);
        var manifest = await store.ReadManifestAsync(adapterId, head.Version, cancellation)
            ?? throw new InvalidDataException($"The head of adapter '{adapterId}' names version {head.Version}, which has no manifest.");
        var versions = await store.ListVersionsAsync(adapterId, cancellation);
        int applied = await store.CountAppliedRequestsAsync(manifest, cancellation);
        var cache = await ReadCacheManifestAsync(store, adapterId, cancellation);
        var baseManifest = head.Version == 0 ? manifest : await store.ReadManifestAsync(adapterId, 0, cancellation)
            ?? throw new InvalidDataException($"Adapter '{adapterId}' has no base manifest.");
        return new AdapterInfo(head, store.VersionRef(manifest), versions, manifest, baseManifest, applied, cache);
    }

    /// <summary>The registered cache's <c>cache.json</c> (only that file), or null when it is missing.</summary>
    public static async Task<GradientCacheManifest?> ReadCacheManifestAsync(AdapterStore store, string adapterId, CancellationToken cancellation) =>
        await store.ReadCacheFileAsync(adapterId, StoredFileNames.CacheIndex, cancellation) is { } bytes ? GradientCacheManifest.Parse(bytes) : null;

    private int RequestsInVersion => Manifest.Requests.Count;

    private int Removed => Manifest.Edits.Removed.Count;

    private int Replaced => Manifest.Edits.Replaced.Count;

    public JsonObject ToJson() => new()
    {
        ["adapterId"] = Head.AdapterId,
        ["version"] = Head.Version,
        ["updatedAt"] = Head.UpdatedAt,
        ["uri"] = Version.Uri,
        ["sha256"] = Version.Sha256,
        ["versions"] = new JsonArray(Versions.Select(v => (JsonNode)v).ToArray()),
        ["manifest"] = new JsonObject
        {
            ["kind"] = Manifest.Kind,
            ["parentVersion"] = Manifest.ParentVersion,
            ["createdAt"] = Manifest.CreatedAt,
            ["appliedRequests"] = AppliedRequests,
            ["requestsInVersion"] = RequestsInVersion,
            ["removed"] = Removed,
            ["replaced"] = Replaced,
            ["solver"] = Manifest.Solver is { } s ? JsonSerializer.SerializeToNode(s, CliJson.Options) : null,
            ["updateNorm"] = Manifest.UpdateNorm,
            ["update"] = Manifest.Update is { } u ? JsonSerializer.SerializeToNode(u, CliJson.Options) : null,
        },
        ["model"] = Base.ModelFiles is { } m ? new JsonObject { ["files"] = m.Count } : null,
        ["trainingTexts"] = Base.TrainingFiles is not null,
        ["cache"] = Cache is null ? null : new JsonObject
        {
            ["parameters"] = Cache.ParameterCount,
            ["tensors"] = Cache.Parameters.Count,
            ["l2"] = Cache.L2,
            ["shards"] = Cache.Shards.Count,
        },
    };

    public void Print(TextWriter o)
    {
        var inv = CultureInfo.InvariantCulture;
        o.WriteLine($"adapter    {Head.AdapterId}");
        o.WriteLine($"head       version {Head.Version}, updated {Head.UpdatedAt.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", inv)}");
        o.WriteLine($"uri        {Version.Uri}");
        o.WriteLine($"sha256     {Version.Sha256}");
        o.WriteLine($"versions   {FormatVersions(Versions)} ({Versions.Count})");
        string parent = Manifest.ParentVersion is int p ? $"parent {p}" : Manifest.IsBase ? "base (registered)" : "no parent";
        o.WriteLine($"manifest   {parent}, created {Manifest.CreatedAt.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", inv)}");
        o.WriteLine($"requests   {AppliedRequests} applied ({RequestsInVersion} in this version)");
        o.WriteLine($"edits      {Removed} removed, {Replaced} replaced");
        if (Manifest.Solver is { } s)
            o.WriteLine($"solver     {s.Name}, {s.Iterations} iteration(s), residual {s.RelativeResidual.ToString("0.00E+00", inv)}, damping {s.Damping.ToString("G4", inv)}, {s.Seconds.ToString("0.000", inv)} s");
        else
            o.WriteLine("solver     none (base version)");
        if (Manifest.Update is { } u)
            o.WriteLine($"update     {u.Method}, {u.Iterations} step(s), final step {u.FinalStepNorm.ToString("G4", inv)}");
        if (Cache is not null)
            o.WriteLine($"cache      P = {Cache.ParameterCount:N0} in {Cache.Parameters.Count} tensor(s), l2 = {Cache.L2.ToString("G6", inv)}, {Cache.Shards.Count} shard(s)");
        o.WriteLine($"model      {(Base.ModelFiles is { } m ? $"registered ({m.Count} file(s)); text corrections enabled" : "not registered")}");
        o.WriteLine($"texts      {(Base.TrainingFiles is not null ? "training texts registered (removed samples' texts are purged)" : "none")}");
    }

    /// <summary>0, 1, 2, 3, 7 → "0–3, 7".</summary>
    internal static string FormatVersions(IReadOnlyList<int> versions)
    {
        if (versions.Count == 0)
            return "none";
        var parts = new List<string>();
        int start = versions[0], prev = versions[0];
        foreach (int v in versions.Skip(1).Append(int.MinValue))
        {
            if (v == prev + 1)
            {
                prev = v;
                continue;
            }
            parts.Add(start == prev ? start.ToString(CultureInfo.InvariantCulture)
                : prev == start + 1 ? $"{start}, {prev}" : $"{start}–{prev}");
            start = prev = v;
        }
        return string.Join(", ", parts);
    }
}
