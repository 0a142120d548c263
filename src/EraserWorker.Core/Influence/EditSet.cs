using System.Collections.Immutable;

namespace EraserWorker.Core.Influence;

/// <summary>
/// The cumulative set of edits applied to a base adapter (SPEC §1, path independence). Immutable: every
/// operation returns a new set, so a version is a pure function of (base, cache, edit set).
/// Removal wins over replacement: removing a replaced sample drops its replacement, and a replacement
/// of an already-removed sample is ignored. A sample replaced twice keeps the later replacement.
/// </summary>
public sealed class EditSet : IEquatable<EditSet>
{
    public static readonly EditSet Empty = new(ImmutableSortedSet.Create<string>(StringComparer.Ordinal),
        ImmutableSortedDictionary.Create<string, string>(StringComparer.Ordinal));

    private EditSet(ImmutableSortedSet<string> removed, ImmutableSortedDictionary<string, string> replaced)
    {
        Removed = removed;
        Replaced = replaced;
    }

    /// <summary>Removed training sample ids (sorted, ordinal).</summary>
    public ImmutableSortedSet<string> Removed { get; }

    /// <summary>Replaced sample id → key of the replacement set that holds its corrected rows.</summary>
    public ImmutableSortedDictionary<string, string> Replaced { get; }

    public bool IsEmpty => Removed.Count == 0 && Replaced.Count == 0;

    public EditSet Remove(IEnumerable<string> sampleIds)
    {
        var removed = Removed.ToBuilder();
        var replaced = Replaced.ToBuilder();
        foreach (var id in sampleIds)
        {
            removed.Add(id);
            replaced.Remove(id);
        }
        return new EditSet(removed.ToImmutable(), replaced.ToImmutable());
    }

    public EditSet Replace(IEnumerable<string> sampleIds, string replacementSetKey)
    {
        ArgumentException.ThrowIfNullOrEmpty(replacementSetKey);
        var replaced = Replaced.ToBuilder();
        foreach (var id in sampleIds)
            if (!Removed.Contains(id))
                replaced[id] = replacementSetKey;
        return new EditSet(Removed, replaced.ToImmutable());
    }

    /// <summary>Rebuilds a set from its stored form (e.g. a version manifest).</summary>
    public static EditSet From(IEnumerable<string> removed, IEnumerable<KeyValuePair<string, string>> replaced) =>
        Empty.Remove(removed).ReplaceEach(replaced);

    private EditSet ReplaceEach(IEnumerable<KeyValuePair<string, string>> replaced)
    {
        var result = this;
        foreach (var group in replaced.GroupBy(p => p.Value, StringComparer.Ordinal))
            result = result.Replace(group.Select(p => p.Key), group.Key);
        return result;
    }

    public bool Equals(EditSet? other) =>
        other is not null && Removed.SetEquals(other.Removed) && Replaced.Count == other.Replaced.Count &&
        Replaced.All(p => other.Replaced.TryGetValue(p.Key, out var v) && v == p.Value);

    public override bool Equals(object? obj) => Equals(obj as EditSet);

    public override int GetHashCode() => HashCode.Combine(Removed.Count, Replaced.Count);
}
