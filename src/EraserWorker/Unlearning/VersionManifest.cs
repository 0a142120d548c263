using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using EraserWorker.Contracts;
using EraserWorker.Core.Influence;

namespace EraserWorker.Unlearning;

/// <summary>
/// <c>manifest.json</c> of a version (SPEC §4): the audit trail. It carries the cumulative edit set (so the next
/// version is computed from the base, never from this one), which requests each version applied, the solver's
/// figures and the files' digests. Version 0 is the registered base and may carry only the digests.
/// </summary>
public sealed record VersionManifest
{
    /// <summary>Same format name as the base manifest the store writes at registration.</summary>
    public const string FormatName = "eraser.manifest/v1";

    public string Format { get; init; } = FormatName;
    public required string AdapterId { get; init; }
    public int Version { get; init; }
    public int? ParentVersion { get; init; }
    public DateTimeOffset CreatedAt { get; init; }

    /// <summary>Requests first applied by this version, in order.</summary>
    public IReadOnlyList<AppliedRequest> Requests { get; init; } = [];

    /// <summary>Every request applied so far (this version and its ancestors) → the version that applied it.</summary>
    public IReadOnlyDictionary<string, int> RequestHistory { get; init; } = new Dictionary<string, int>();

    /// <summary>The cumulative edits relative to the base: removed ids, and replaced id → replacementsUri.</summary>
    public ManifestEdits Edits { get; init; } = new();

    public SolverSummary? Solver { get; init; }
    public double? UpdateNorm { get; init; }

    /// <summary>File name → digest (the store checks these against the files it uploads).</summary>
    public IReadOnlyDictionary<string, ManifestFile> Files { get; init; } = new Dictionary<string, ManifestFile>();

    [JsonIgnore]
    public EditSet EditSet => EditSet.From(Edits.Removed, Edits.Replaced);

    private static readonly JsonSerializerOptions Lenient = new(JsonSerializerDefaults.Web);

    public static VersionManifest Parse(string adapterId, int version, JsonObject json)
    {
        var manifest = json.Deserialize<VersionManifest>(Lenient)
            ?? throw new InvalidDataException($"The manifest of {adapterId} version {version} is empty.");
        return manifest with { AdapterId = adapterId, Version = version };
    }
}

public sealed record ManifestEdits
{
    public IReadOnlyList<string> Removed { get; init; } = [];
    public IReadOnlyDictionary<string, string> Replaced { get; init; } = new Dictionary<string, string>();

    public static ManifestEdits From(EditSet edits) => new()
    {
        Removed = edits.Removed.ToList(),
        Replaced = edits.Replaced.ToDictionary(p => p.Key, p => p.Value, StringComparer.Ordinal),
    };
}

public sealed record ManifestFile(string Sha256, long? Length = null);

public sealed record AppliedRequest(string RequestId, string Task, IReadOnlyList<string> SampleIds, string? ReplacementsUri, DateTimeOffset? RequestedAt);
