namespace EraserWorker.Evaluation;

/// <summary>One fine-tuning sample in text form.</summary>
public sealed record TextSample(string Id, string Prompt, string Response);

/// <summary>
/// The fine-tuning task: per-sample memorisable facts built from the corpus's words — prompt
/// <c>"The secret of {key} is"</c>, response <c>" {word}."</c> — which no other sample implies, so a model
/// retrained without a sample cannot know its answer (the erasure case). Keys are distinct; the defects the
/// replacement tasks fix are planted in disjoint samples: a typo in the key of <see cref="ExperimentSettings.NoisyPromptFraction"/>
/// of the prompts (query modification restores the prompt) and a wrong answer in
/// <see cref="ExperimentSettings.CorruptedResponseFraction"/> of the responses (response correction restores it).
/// Everything depends only on the seed.
/// </summary>
public sealed class MemorisationTask
{
    private MemorisationTask(List<TextSample> training, List<TextSample> test, Dictionary<string, TextSample> clean,
        List<string> noisy, List<string> corrupted, List<string> removable)
    {
        Training = training;
        Test = test;
        Clean = clean;
        NoisyPromptIds = noisy;
        CorruptedResponseIds = corrupted;
        RemovableIds = removable;
    }

    /// <summary>The training set as the original adapter saw it (with the planted defects).</summary>
    public IReadOnlyList<TextSample> Training { get; }

    /// <summary>Held-out samples with unseen keys.</summary>
    public IReadOnlyList<TextSample> Test { get; }

    /// <summary>The defect-free form of every training sample, by id.</summary>
    public IReadOnlyDictionary<string, TextSample> Clean { get; }

    public IReadOnlyList<string> NoisyPromptIds { get; }

    public IReadOnlyList<string> CorruptedResponseIds { get; }

    /// <summary>Samples without a planted defect, in a seeded random order: removal takes a prefix of this list.</summary>
    public IReadOnlyList<string> RemovableIds { get; }

    public static MemorisationTask Create(Corpus corpus, ExperimentSettings settings, int seed)
    {
        var random = new Random(seed * 7919 + 17);
        var keys = corpus.Words(6, 10).ToArray();
        var values = corpus.Words(3, 7).ToArray();
        int total = settings.TrainSamples + settings.TestSamples;
        if (keys.Length < total)
            throw new InvalidOperationException($"The corpus has {keys.Length} distinct key words; {total} are needed.");
        random.Shuffle(keys);
        string Prompt(string key) => $"The secret of {key} is";
        string Answer() => $" {values[random.Next(values.Length)]}.";
        var clean = new List<TextSample>();
        for (int i = 0; i < total; i++)
            clean.Add(new TextSample(i < settings.TrainSamples ? $"s{i:D4}" : $"t{i - settings.TrainSamples:D4}", Prompt(keys[i]), Answer()));
        var training = clean.Take(settings.TrainSamples).ToList();
        var test = clean.Skip(settings.TrainSamples).ToList();

        var order = Enumerable.Range(0, training.Count).ToArray();
        random.Shuffle(order);
        int noisyCount = (int)Math.Round(settings.NoisyPromptFraction * training.Count);
        int corruptedCount = (int)Math.Round(settings.CorruptedResponseFraction * training.Count);
        var noisy = order.Take(noisyCount).ToList();
        var corrupted = order.Skip(noisyCount).Take(corruptedCount).ToList();
        var removable = order.Skip(noisyCount + corruptedCount).Select(i => training[i].Id).ToList();
        var defective = training.ToList();
        foreach (int i in noisy)
            defective[i] = training[i] with { Prompt = Prompt(Typo(keys[i], random)) };
        foreach (int i in corrupted)
        {
            string wrong;
            do
                wrong = Answer();
            while (wrong == training[i].Response);
            defective[i] = training[i] with { Response = wrong };
        }
        return new MemorisationTask(defective, test, training.ToDictionary(s => s.Id, StringComparer.Ordinal),
            noisy.Select(i => training[i].Id).Order(StringComparer.Ordinal).ToList(),
            corrupted.Select(i => training[i].Id).Order(StringComparer.Ordinal).ToList(), removable);
    }

    /// <summary>A typing error: two adjacent letters swapped (different letters) or one letter dropped.</summary>
    private static string Typo(string key, Random random)
    {
        for (int attempt = 0; attempt < 20; attempt++)
        {
            int i = random.Next(key.Length - 1);
            if (random.Next(2) == 0 && key[i] != key[i + 1])
                return key[..i] + key[i + 1] + key[i] + key[(i + 2)..];
            if (attempt > 0)
                return key.Remove(i, 1);
        }
        return key.Remove(0, 1);
    }
}
