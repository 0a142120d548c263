using System.Text.Json;
using System.Text.Json.Serialization;
using EraserWorker.Contracts;

namespace EraserWorker.Storage.Manifests;

/// <summary>
/// <c>manifest.json</c> of a version (SPEC §4), one type for the base and for updates — the audit trail an erasure needs.
/// <list type="bullet">
/// <item><c>kind: "base"</c> (version 0, written at registration): the digests of the adapter files, of the gradient cache
/// and, when registered with them, of the base model and of the training texts.</item>
/// <item><c>kind: "update"</c> (versions ≥ 1, written by the worker): the parent, the requests this version applied first,
/// the cumulative edit set relative to the base (the next version is computed from the base with it, never from this
/// version), the solver's figures and the digests of its files.</item>
/// </list>
/// Which version applied a request is recorded once, in that request's marker (<c>requests/&lt;sha256&gt;.json</c>), not
/// copied into every later manifest: a manifest's size depends on the batch and the edit set, not on the history.
/// </summary>
public sealed record AdapterManifest
{
    public const string FormatName = "eraser.manifest/v1";
    public const string BaseKind = "base";
    public const string UpdateKind = "update";

    public string Format { get; init; } = FormatName;
    public string AdapterId { get; init; } = "";
    public int Version { get; init; }

    /// <summary>Null for the base.</summary>
    public int? ParentVersion { get; init; }

    /// <summary><see cref="BaseKind"/> or <see cref="UpdateKind"/>.</summary>
    public string Kind { get; init; } = UpdateKind;

    public DateTimeOffset CreatedAt { get; init; }
    public string? WriterId { get; init; }

    /// <summary>The version's own files (not the manifest): name → digest. The store writes these; a reader verifies them.</summary>
    public IReadOnlyDictionary<string, ManifestFile> Files { get; init; } = new Dictionary<string, ManifestFile>();

    /// <summary>Base only: the gradient cache's files.</summary>
    public IReadOnlyDictionary<string, ManifestFile>? CacheFiles { get; init; }

    /// <summary>Base only, optional: the files of the base model registered with the adapter (relative path → digest).</summary>
    public IReadOnlyDictionary<string, ManifestFile>? ModelFiles { get; init; }

    /// <summary>Base only, optional: the registered training texts (relative path → digest at registration).</summary>
    public IReadOnlyDictionary<string, ManifestFile>? TrainingFiles { get; init; }

    /// <summary>Requests first applied by this version, in order (empty for the base).</summary>
    [JsonIgnore]
    public IReadOnlyList<AppliedRequest> Requests { get; init; } = [];

    /// <summary>The cumulative edits relative to the base: removed ids, and replaced id → replacementsUri (none for the base).</summary>
    [JsonIgnore]
    public ManifestEdits Edits { get; init; } = new();

    // A base manifest has no requests and no edits: they are left out of its JSON rather than written empty.
    [JsonInclude, JsonPropertyName("requests")]
    private IReadOnlyList<AppliedRequest>? RequestsMember
    {
        get => IsBase && Requests.Count == 0 ? null : Requests;
        init => Requests = value ?? [];
    }

    [JsonInclude, JsonPropertyName("edits")]
    private ManifestEdits? EditsMember
    {
        get => IsBase && Edits.Removed.Count == 0 && Edits.Replaced.Count == 0 ? null : Edits;
        init => Edits = value ?? new();
    }

    public SolverSummary? Solver { get; init; }
    public double? UpdateNorm { get; init; }

    /// <summary>How the update was computed (one step or iterated) and how the iteration went; null for the base and for
    /// manifests written before the method was recorded (those ran one step).</summary>
    public UpdateRecord? Update { get; init; }

    /// <summary>Training texts purged from the store when this version was published (sample ids), with the digest of the
    /// rewritten training file; null when nothing was purged.</summary>
    public PurgeRecord? Purged { get; init; }

    /// <summary>Read only — manifests written before request markers carried every request ever applied (request id →
    /// version). The publisher turns it into markers before the first version without it becomes head.</summary>
    public IReadOnlyDictionary<string, int>? RequestHistory { get; init; }

    [JsonIgnore]
    public bool IsBase => Kind == BaseKind;

    /// <summary>The digest of the adapter weights (the <c>sha256</c> of the events), or null when not recorded.</summary>
    [JsonIgnore]
    public string? WeightsSha256 => Files.TryGetValue(StoredFileNames.AdapterWeights, out var f) ? f.Sha256 : null;

    private static readonly JsonSerializerOptions WriteOptions = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new ManifestFileConverter() },
    };

    private static readonly JsonSerializerOptions ReadOptions = new(JsonSerializerDefaults.Web)
    {
        Converters = { new ManifestFileConverter() },
    };

    public byte[] ToUtf8Json() => JsonSerializer.SerializeToUtf8Bytes(this, WriteOptions);

    /// <summary>Parses a stored manifest; the version and adapter it is stored under win over what it says (a copied
    /// manifest cannot impersonate another version). Throws <see cref="InvalidDataException"/> when malformed.</summary>
    public static AdapterManifest Parse(ReadOnlySpan<byte> utf8Json, string adapterId, int version)
    {
        AdapterManifest? manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<AdapterManifest>(utf8Json, ReadOptions);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"The manifest of version {version} of adapter '{adapterId}' is malformed: {e.Message}", e);
        }
        if (manifest is null)
            throw new InvalidDataException($"The manifest of version {version} of adapter '{adapterId}' is empty.");
        // Manifests of the first format version had no "kind" on updates; version 0 is always the base.
        return manifest with { AdapterId = adapterId, Version = version, Kind = version == 0 ? BaseKind : manifest.Kind };
    }
}

/// <summary>A file's digest: lowercase hex SHA-256 and size in bytes.</summary>
public sealed record ManifestFile(string Sha256, long? Bytes = null);

/// <summary>A request as applied by a version.</summary>
public sealed record AppliedRequest(string RequestId, string Task, IReadOnlyList<string> SampleIds, string? ReplacementsUri, DateTimeOffset? RequestedAt);

/// <summary>The cumulative edit set in its stored form (SPEC §1): removed ids, and replaced id → replacementsUri.</summary>
public sealed record ManifestEdits
{
    public IReadOnlyList<string> Removed { get; init; } = [];
    public IReadOnlyDictionary<string, string> Replaced { get; init; } = new Dictionary<string, string>();
}

/// <summary>The update method of a version and its course (extension of SPEC §4).</summary>
/// <param name="Method"><c>one-step</c> (SPEC §1's single solve) or <c>iterated</c> (the converging solver of the edited
/// objective, docs/spec.md §1.6).</param>
/// <param name="Iterations">Steps taken (1 for one step).</param>
/// <param name="Objective">The edited objective F after each accepted step, relative to F(θ₀) = 0 (empty for one step).</param>
/// <param name="FinalStepNorm">‖θ_k − θ_{k−1}‖ of the last step.</param>
/// <param name="PredictedEditedLossChange">The first-order change of the edited samples' loss, Σᵢ∈edited gᵢᵀ(θ' − θ₀).</param>
public sealed record UpdateRecord(string Method, int Iterations, IReadOnlyList<double> Objective, double FinalStepNorm, double PredictedEditedLossChange);

/// <summary>What a version purged from the registered training texts (issue 10: an erased person's text must not stay in
/// the store).</summary>
/// <param name="SampleIds">The samples this version removed, whose texts are deleted from the store.</param>
/// <param name="TrainingSha256">The digest of the training file after the rewrite.</param>
public sealed record PurgeRecord(IReadOnlyList<string> SampleIds, string TrainingSha256);

/// <summary>Reads <c>{"sha256", "bytes"}</c>, the older update manifests' <c>{"sha256", "length"}</c> and a bare digest
/// string; writes <c>{"sha256", "bytes"}</c>.</summary>
internal sealed class ManifestFileConverter : JsonConverter<ManifestFile>
{
    public override ManifestFile Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String)
            return new ManifestFile(reader.GetString()!);
        using var document = JsonDocument.ParseValue(ref reader);
        var root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("sha256", out var sha) || sha.ValueKind != JsonValueKind.String)
            throw new JsonException("A file entry needs a \"sha256\" string.");
        long? bytes = root.TryGetProperty("bytes", out var b) && b.ValueKind == JsonValueKind.Number ? b.GetInt64()
            : root.TryGetProperty("length", out var l) && l.ValueKind == JsonValueKind.Number ? l.GetInt64() : null;
        return new ManifestFile(sha.GetString()!, bytes);
    }

    public override void Write(Utf8JsonWriter writer, ManifestFile value, JsonSerializerOptions options)
    {
        writer.WriteStartObject();
        writer.WriteString("sha256", value.Sha256);
        if (value.Bytes is long bytes)
            writer.WriteNumber("bytes", bytes);
        writer.WriteEndObject();
    }
}
