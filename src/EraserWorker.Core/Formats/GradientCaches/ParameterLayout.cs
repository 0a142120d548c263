namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>Maps a position in θ (or in a cache row) to its parameter, for messages.</summary>
internal sealed class ParameterLayout
{
    private readonly ParameterSpec[] _parameters;
    private readonly long[] _starts;

    public ParameterLayout(IReadOnlyList<ParameterSpec> parameters)
    {
        _parameters = parameters.ToArray();
        _starts = new long[_parameters.Length];
        long total = 0;
        for (int i = 0; i < _parameters.Length; i++)
        {
            _starts[i] = total;
            total = checked(total + _parameters[i].Count);
        }
        Total = total;
    }

    public long Total { get; }

    /// <summary>"parameter 'name' element k" for position <paramref name="index"/> of a row.</summary>
    public string Describe(long index)
    {
        int i = Array.BinarySearch(_starts, index);
        if (i < 0)
            i = ~i - 1;
        // Parameters have ≥ 1 element, so starts are strictly increasing and i is the owner.
        return $"parameter '{_parameters[i].Name}' element {index - _starts[i]}";
    }
}
