using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace EraserWorker.Evaluation;

/// <summary>
/// The real text the base model learns English from: the licence texts of Debian's <c>base-files</c> package in
/// <c>/usr/share/common-licenses</c> (GPL, LGPL, GFDL, Apache, MPL, Artistic, BSD, CC0 — about 260 KB). base-files is
/// Essential on Debian and Ubuntu, so the same text is on every machine and container image that can run the worker,
/// with no download; it is prose with a stable vocabulary, which a model of a few hundred thousand weights can learn
/// in minutes. Files are read in ordinal name order, symlinks to the same file once; the sha256 goes into the report.
/// </summary>
public sealed partial class Corpus
{
    public const string DefaultDirectory = "/usr/share/common-licenses";

    private Corpus(string text, IReadOnlyList<string> files, string directory)
    {
        Text = text;
        Files = files;
        Directory = directory;
        Sha256 = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
    }

    public string Text { get; }

    public IReadOnlyList<string> Files { get; }

    public string Directory { get; }

    public string Sha256 { get; }

    public static Corpus Load(string directory = DefaultDirectory)
    {
        if (!System.IO.Directory.Exists(directory))
            throw new DirectoryNotFoundException(
                $"The corpus folder '{directory}' does not exist (it comes with Debian's base-files package; give another folder of text files with --corpus).");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var files = new List<string>();
        var text = new StringBuilder();
        foreach (var file in System.IO.Directory.GetFiles(directory).Order(StringComparer.Ordinal))
        {
            var info = new FileInfo(file);
            string target = info.LinkTarget is null ? info.FullName : (info.ResolveLinkTarget(true)?.FullName ?? info.FullName);
            if (!seen.Add(target))
                continue;
            files.Add(Path.GetFileName(file));
            text.Append(File.ReadAllText(target).Replace("\r\n", "\n")).Append("\n\n");
        }
        if (text.Length < 20_000)
            throw new InvalidDataException($"The corpus folder '{directory}' holds only {text.Length} characters of text; at least 20 000 are needed.");
        return new Corpus(text.ToString(), files, directory);
    }

    /// <summary>Distinct lower-case alphabetic words of the corpus with <paramref name="min"/>..<paramref name="max"/>
    /// letters, in ordinal order.</summary>
    public IReadOnlyList<string> Words(int min, int max) =>
        WordPattern().Matches(Text).Select(m => m.Value).Where(w => w.Length >= min && w.Length <= max && w.All(char.IsLower))
            .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();

    [GeneratedRegex(@"\b[A-Za-z]+\b")]
    private static partial Regex WordPattern();
}
