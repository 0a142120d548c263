using System.Text;

namespace EraserWorker.Components.Observability;

/// <summary>Values from messages as they may appear in log lines: control characters (line breaks included) escaped,
/// so a hostile id cannot forge log lines, and cut to a bounded length.</summary>
public static class LogText
{
    public static string Safe(string? value, int max = 200)
    {
        if (value is null)
            return "(none)";
        string cut = value.Length <= max ? value : value[..max] + "…";
        if (!cut.Any(c => char.IsControl(c) || char.IsSurrogate(c) || c is '\u2028' or '\u2029'))
            return cut;
        var sb = new StringBuilder(cut.Length + 16);
        foreach (char c in cut)
        {
            if (char.IsControl(c) || char.IsSurrogate(c) || c is '\u2028' or '\u2029')
                sb.Append("\\u").Append(((int)c).ToString("x4", System.Globalization.CultureInfo.InvariantCulture));
            else
                sb.Append(c);
        }
        return sb.ToString();
    }
}
