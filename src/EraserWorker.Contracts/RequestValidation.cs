using System.Globalization;
using System.Text.RegularExpressions;

namespace EraserWorker.Contracts;

/// <summary>
/// The SPEC §3 rules for ids and requests, without dependencies. The patterns are the very strings used in
/// <c>schemas/*.schema.json</c> (a test keeps them in sync); they are written to mean the same in ECMA-262
/// (JSON Schema) and .NET: <c>$(?!\n)</c> is "end of input" in both (a bare <c>$</c> in .NET also matches
/// before a final line feed).
/// </summary>
public static partial class RequestValidation
{
    /// <summary>Maximum length of a request id.</summary>
    public const int MaxRequestIdLength = 128;

    /// <summary>Maximum length of an adapter id.</summary>
    public const int MaxAdapterIdLength = 200;

    /// <summary>Maximum length of a sample id, in Unicode code points.</summary>
    public const int MaxSampleIdLength = 256;

    /// <summary>Default of the most characters (UTF-16 code units) that the prompts and responses of one request's text
    /// <c>replacements</c> may hold together (the worker's <c>Eraser:Worker:MaxReplacementTextLength</c>).</summary>
    public const int DefaultMaxReplacementTextLength = 1 << 20;

    /// <summary>Maximum length of a replacement-set name.</summary>
    public const int MaxReplacementNameLength = 128;

    /// <summary>The scheme prefix of a replacements URI: <c>eraser:adapters/&lt;adapterId&gt;/replacements/&lt;name&gt;</c>.</summary>
    public const string ReplacementsUriPrefix = "eraser:adapters/";

    /// <summary>Infix between the adapter id and the name in a replacements URI.</summary>
    public const string ReplacementsUriInfix = "/replacements/";

    /// <summary>Maximum length of a replacements URI (prefix + longest adapter id + infix + longest name).</summary>
    public const int MaxReplacementsUriLength =
        16 /* ReplacementsUriPrefix */ + MaxAdapterIdLength + 14 /* ReplacementsUriInfix */ + MaxReplacementNameLength;

    /// <summary>
    /// Request id: 1–128 printable ASCII characters (U+0020–U+007E), not starting or ending with a space.
    /// </summary>
    public const string RequestIdPattern = @"^[\x21-\x7E](?:[\x20-\x7E]{0,126}[\x21-\x7E])?$(?!\n)";

    /// <summary>
    /// Adapter id: segments of <c>[a-z0-9._-]</c> separated by <c>/</c>; no empty, <c>.</c> or <c>..</c>
    /// segment (so no leading, trailing or doubled <c>/</c>). Length 1–200 is checked separately
    /// (<c>minLength</c>/<c>maxLength</c> in the schemas).
    /// </summary>
    public const string AdapterIdPattern = @"^(?!\.\.?(?:/|$))[a-z0-9._-]+(?:/(?!\.\.?(?:/|$))[a-z0-9._-]+)*$(?!\n)";

    /// <summary>
    /// Sample id: 1–256 Unicode code points, none of them a line break (LF, CR, VT, FF, NEL, U+2028, U+2029)
    /// and no unpaired surrogate (it must be encodable as UTF-8).
    /// </summary>
    public const string SampleIdPattern =
        @"^(?:[^\n\r\v\f\u0085\u2028\u2029\uD800-\uDFFF]|[\uD800-\uDBFF][\uDC00-\uDFFF]){1,256}$(?!\n)";

    /// <summary>
    /// Replacement-set name (one blob-name segment): 1–128 characters of <c>[a-z0-9._-]</c> starting with a
    /// letter or digit.
    /// </summary>
    public const string ReplacementNamePattern = @"^[a-z0-9][a-z0-9._-]{0,127}$(?!\n)";

    /// <summary>
    /// Replacements URI: <c>eraser:adapters/&lt;adapterId&gt;/replacements/&lt;name&gt;</c>, i.e. <c>eraser:</c>
    /// followed by the set's blob prefix in the store. The adapter id's length (≤ 200) is checked separately.
    /// </summary>
    public const string ReplacementsUriPattern =
        @"^eraser:adapters/(?:(?!\.\.?/)[a-z0-9._-]+/)+replacements/[a-z0-9][a-z0-9._-]{0,127}$(?!\n)";

    /// <summary>Lowercase hex SHA-256.</summary>
    public const string Sha256Pattern = @"^[0-9a-f]{64}$(?!\n)";

    [GeneratedRegex(RequestIdPattern, RegexOptions.CultureInvariant)]
    private static partial Regex RequestIdRegex();

    [GeneratedRegex(AdapterIdPattern, RegexOptions.CultureInvariant)]
    private static partial Regex AdapterIdRegex();

    [GeneratedRegex(SampleIdPattern, RegexOptions.CultureInvariant)]
    private static partial Regex SampleIdRegex();

    [GeneratedRegex(ReplacementNamePattern, RegexOptions.CultureInvariant)]
    private static partial Regex ReplacementNameRegex();

    [GeneratedRegex(ReplacementsUriPattern, RegexOptions.CultureInvariant)]
    private static partial Regex ReplacementsUriRegex();

    [GeneratedRegex(Sha256Pattern, RegexOptions.CultureInvariant)]
    private static partial Regex Sha256Regex();

    /// <summary>True for a valid request id (<see cref="RequestIdPattern"/>).</summary>
    public static bool IsValidRequestId(string? requestId) =>
        requestId is { Length: >= 1 and <= MaxRequestIdLength } && RequestIdRegex().IsMatch(requestId);

    /// <summary>True for a valid adapter id (<see cref="AdapterIdPattern"/>, 1–200 characters). Adapter ids
    /// become parts of blob names; only ids passing this check may be used to build them.</summary>
    public static bool IsValidAdapterId(string? adapterId) =>
        adapterId is { Length: >= 1 and <= MaxAdapterIdLength } && AdapterIdRegex().IsMatch(adapterId);

    /// <summary>True for a valid sample id (<see cref="SampleIdPattern"/>).</summary>
    public static bool IsValidSampleId(string? sampleId) =>
        sampleId is { Length: >= 1 and <= 2 * MaxSampleIdLength } && SampleIdRegex().IsMatch(sampleId);

    /// <summary>True for a valid replacement-set name (<see cref="ReplacementNamePattern"/>).</summary>
    public static bool IsValidReplacementName(string? name) =>
        name is { Length: >= 1 and <= MaxReplacementNameLength } && ReplacementNameRegex().IsMatch(name);

    /// <summary>True for a lowercase hex SHA-256.</summary>
    public static bool IsValidSha256(string? sha256) => sha256 is { Length: 64 } && Sha256Regex().IsMatch(sha256);

    /// <summary>Builds the replacements URI of a set; throws <see cref="ArgumentException"/> for invalid parts.</summary>
    public static string FormatReplacementsUri(string adapterId, string name)
    {
        if (!IsValidAdapterId(adapterId))
            throw new ArgumentException($"Invalid adapter id '{adapterId}'.", nameof(adapterId));
        if (!IsValidReplacementName(name))
            throw new ArgumentException($"Invalid replacement-set name '{name}' (expected {ReplacementNamePattern}).", nameof(name));
        return ReplacementsUriPrefix + adapterId + ReplacementsUriInfix + name;
    }

    /// <summary>
    /// Splits a replacements URI into adapter id and set name. The name is the last segment and
    /// <c>replacements</c> the one before it, so an adapter id that itself contains a <c>replacements</c>
    /// segment is still unambiguous.
    /// </summary>
    public static bool TryParseReplacementsUri(string? uri, out string adapterId, out string name)
    {
        adapterId = name = "";
        if (uri is null || uri.Length > MaxReplacementsUriLength || !ReplacementsUriRegex().IsMatch(uri))
            return false;
        int infix = uri.LastIndexOf(ReplacementsUriInfix, StringComparison.Ordinal);
        string id = uri[ReplacementsUriPrefix.Length..infix];
        string n = uri[(infix + ReplacementsUriInfix.Length)..];
        if (!IsValidAdapterId(id) || !IsValidReplacementName(n))
            return false;
        adapterId = id;
        name = n;
        return true;
    }

    /// <summary>
    /// Checks a request against every rule of <c>unlearning-requested.schema.json</c> plus the cross-field
    /// rules a schema cannot express (the replacements URI must name the request's own adapter; at most
    /// <paramref name="maxSampleIds"/> sample ids; the ids of text <c>replacements</c> are exactly the sample ids, each
    /// once; their texts hold at most <paramref name="maxReplacementTextLength"/> characters together). Sample ids must
    /// be distinct (<c>uniqueItems</c>). Returns the problems, empty when the request is valid.
    /// Values are quoted only when valid-length, so a problem text never grows with a hostile input.
    /// </summary>
    public static IReadOnlyList<string> Validate(UnlearningRequested? request, int maxSampleIds,
        int maxReplacementTextLength = DefaultMaxReplacementTextLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSampleIds, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxReplacementTextLength, 1);
        var problems = new List<string>();
        if (request is null)
        {
            problems.Add("The request is missing (null body).");
            return problems;
        }

        if (!IsValidRequestId(request.RequestId))
            problems.Add($"requestId {Show(request.RequestId)} is invalid: expected 1–{MaxRequestIdLength} printable ASCII characters, not starting or ending with a space.");
        if (!IsValidAdapterId(request.AdapterId))
            problems.Add($"adapterId {Show(request.AdapterId)} is invalid: expected 1–{MaxAdapterIdLength} characters of [a-z0-9._-] in '/'-separated segments, none empty, '.' or '..'.");
        if (!UnlearningTasks.IsKnown(request.Task))
            problems.Add($"task {Show(request.Task)} is unknown: expected one of {string.Join(", ", UnlearningTasks.All)}.");

        var sampleIds = request.SampleIds;
        if (sampleIds is null || sampleIds.Count == 0)
        {
            problems.Add("sampleIds must contain at least one sample id.");
        }
        else
        {
            if (sampleIds.Count > maxSampleIds)
                problems.Add($"sampleIds has {sampleIds.Count} ids; at most {maxSampleIds} are accepted per request.");
            int bad = 0;
            for (int i = 0; i < sampleIds.Count; i++)
            {
                if (IsValidSampleId(sampleIds[i]))
                    continue;
                if (++bad <= 5)
                    problems.Add($"sampleIds[{i}] {Show(sampleIds[i])} is invalid: expected 1–{MaxSampleIdLength} characters without line breaks.");
            }
            if (bad > 5)
                problems.Add($"sampleIds: {bad - 5} more invalid ids.");
            if (bad == 0 && sampleIds.Count <= maxSampleIds)
            {
                var seen = new HashSet<string>(StringComparer.Ordinal);
                var repeated = sampleIds.Where(id => !seen.Add(id)).Distinct(StringComparer.Ordinal).ToList();
                if (repeated.Count > 0)
                    problems.Add($"sampleIds names {string.Join(", ", repeated.Take(5).Select(Show))}{(repeated.Count > 5 ? $" and {repeated.Count - 5} more" : "")} more than once.");
            }
        }

        if (UnlearningTasks.NeedsReplacements(request.Task))
        {
            if (request.ReplacementsUri is null && request.Replacements is null)
                problems.Add($"replacementsUri is required for task '{request.Task}'. For an adapter registered with its model, text replacements may be given instead.");
            else if (request.ReplacementsUri is not null && request.Replacements is not null)
                problems.Add("Give either replacementsUri or replacements, not both.");
        }
        else if (request.Task == UnlearningTasks.Remove)
        {
            if (request.ReplacementsUri is not null)
                problems.Add("replacementsUri must be absent for task 'remove'.");
            if (request.Replacements is not null)
                problems.Add("replacements must be absent for task 'remove'.");
        }
        if (request.Replacements is not null)
            CheckReplacements(request.Replacements, sampleIds, maxSampleIds, maxReplacementTextLength, problems);
        if (request.ReplacementsUri is not null)
        {
            if (!TryParseReplacementsUri(request.ReplacementsUri, out string uriAdapter, out _))
                problems.Add($"replacementsUri {Show(request.ReplacementsUri)} is invalid: expected {ReplacementsUriPrefix}<adapterId>{ReplacementsUriInfix}<name>.");
            else if (IsValidAdapterId(request.AdapterId) && uriAdapter != request.AdapterId)
                problems.Add($"replacementsUri names adapter '{uriAdapter}', not the request's adapter '{request.AdapterId}'.");
        }
        return problems;
    }

    /// <summary>The rules of text <c>replacements</c>: one valid entry per sample id (same set, no repeats), texts
    /// present, responses not empty, the texts' total length bounded.</summary>
    private static void CheckReplacements(IReadOnlyList<TextReplacement?> replacements, IReadOnlyList<string>? sampleIds,
        int maxSampleIds, int maxTextLength, List<string> problems)
    {
        if (replacements.Count == 0)
        {
            problems.Add("replacements must contain at least one sample.");
            return;
        }
        if (replacements.Count > maxSampleIds)
        {
            problems.Add($"replacements has {replacements.Count} samples; at most {maxSampleIds} are accepted per request.");
            return;
        }
        int bad = 0;
        long characters = 0;
        for (int i = 0; i < replacements.Count; i++)
        {
            var r = replacements[i];
            string? problem = r is null ? $"replacements[{i}] is missing (null)."
                : !IsValidSampleId(r.Id) ? $"replacements[{i}].id {Show(r.Id)} is invalid: expected 1–{MaxSampleIdLength} characters without line breaks."
                : r.Prompt is null ? $"replacements[{i}].prompt is missing: expected a string (empty when only the response changes and the tokenizer adds BOS)."
                : string.IsNullOrEmpty(r.Response) ? $"replacements[{i}].response must be a non-empty string."
                : null;
            if (r is not null)
                characters += (r.Prompt?.Length ?? 0) + (r.Response?.Length ?? 0);
            if (problem is not null && ++bad <= 5)
                problems.Add(problem);
        }
        if (bad > 5)
            problems.Add($"replacements: {bad - 5} more invalid entries.");
        if (characters > maxTextLength)
            problems.Add($"replacements hold {characters} characters of text; at most {maxTextLength} are accepted per request.");
        if (bad > 0)
            return;
        var ids = replacements.Select(r => r!.Id).ToList();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var repeated = ids.Where(id => !seen.Add(id)).Distinct(StringComparer.Ordinal).ToList();
        if (repeated.Count > 0)
            problems.Add($"replacements names {string.Join(", ", repeated.Take(5).Select(Show))}{(repeated.Count > 5 ? $" and {repeated.Count - 5} more" : "")} more than once.");
        if (sampleIds is null || sampleIds.Count == 0 || sampleIds.Count > maxSampleIds || !sampleIds.All(IsValidSampleId))
            return; // already reported
        var wanted = sampleIds.ToHashSet(StringComparer.Ordinal);
        var withoutText = wanted.Where(id => !seen.Contains(id)).ToList();
        var notRequested = seen.Where(id => !wanted.Contains(id)).ToList();
        if (withoutText.Count > 0)
            problems.Add($"replacements has no sample for sampleIds {string.Join(", ", withoutText.Take(5).Select(Show))}{(withoutText.Count > 5 ? $" and {withoutText.Count - 5} more" : "")}: its ids must be exactly the sampleIds.");
        if (notRequested.Count > 0)
            problems.Add($"replacements names {string.Join(", ", notRequested.Take(5).Select(Show))}{(notRequested.Count > 5 ? $" and {notRequested.Count - 5} more" : "")}, not in sampleIds: its ids must be exactly the sampleIds.");
    }

    private static string Show(string? value)
    {
        if (value is null)
            return "(missing)";
        const int max = 80;
        string cut = value.Length <= max ? value : value[..max] + "…";
        var sb = new System.Text.StringBuilder(cut.Length + 2).Append('\'');
        foreach (char c in cut)
        {
            if (char.IsControl(c) || char.IsSurrogate(c) || c is '\u2028' or '\u2029')
                sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
            else
                sb.Append(c);
        }
        return sb.Append('\'').ToString();
    }
}
