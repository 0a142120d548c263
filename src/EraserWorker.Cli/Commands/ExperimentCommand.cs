using System.CommandLine;
using EraserWorker.Cli.Output;
using EraserWorker.Evaluation;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser experiment run</c>: unlearning quality and speed against retraining (the LLMEraser experiments at small scale).</summary>
public static class ExperimentCommand
{
    public static Command Create()
    {
        var quick = new Option<bool>("--quick") { Description = "Every task on 3 seeds at a small scale (under 10 minutes on 2 CPU cores)." };
        var output = new Option<string>("--out") { Description = "Folder for results.json, report.md, the plots and work/ (models, adapters, caches).", Required = true };
        var seeds = new Option<string?>("--seeds") { Description = "Override the evaluation seeds, comma-separated (e.g. 7,8); none may be the calibration seed (0)." };
        var corpus = new Option<string>("--corpus") { Description = "Folder of text files the base model learns from.", DefaultValueFactory = _ => Corpus.DefaultDirectory };
        var keepWork = new Option<bool>("--keep-work") { Description = "Keep work/ (base model, adapters, caches) after the run." };
        var baseModel = new Option<string?>("--base-model") { Description = "Reuse this pretrained base-model folder (with tokenizer.json; e.g. work/base-model of an earlier run) instead of pretraining one." };
        var settingsFile = new Option<string?>("--settings") { Description = "JSON file overriding settings of the preset (camelCase names as in results.json's \"settings\")." };
        var run = new Command("run", "Pretrain a tiny LLaMA on real text, fine-tune LoRA adapters, and compare the unlearning methods with retraining on removal, query modification and response correction.")
        {
            quick, output, seeds, corpus, keepWork, baseModel, settingsFile,
        };
        run.SetAction((parse, cancellation) => Task.Run(() => CliErrors.Run(() =>
        {
            var settings = parse.GetValue(quick) ? ExperimentSettings.Quick : ExperimentSettings.Full;
            if (parse.GetValue(settingsFile) is string file)
                settings = ExperimentSettings.Override(settings, File.ReadAllText(file), file);
            var chosen = (parse.GetValue(seeds) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.TryParse(s, out int seed) ? seed : throw new ArgumentException($"--seeds: '{s}' is not an integer.")).ToArray();
            if (chosen.Length > 0)
                settings = settings with { Seeds = chosen };
            string dir = parse.GetValue(output)!;
            if (File.Exists(Path.Combine(dir, ExperimentReport.ResultsFile)))
                throw new IOException($"'{dir}' already holds {ExperimentReport.ResultsFile}; choose a new --out folder.");
            string command = "eraser " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1));
            var runner = new ExperimentRunner(settings, dir, new Progress<string>(Console.Error.WriteLine));
            var results = runner.Run(command, parse.GetValue(corpus)!, parse.GetValue(baseModel), cancellation);
            ExperimentReport.Write(results, dir);
            if (!parse.GetValue(keepWork))
                Directory.Delete(Path.Combine(dir, "work"), true);
            Console.Out.WriteLine(Path.Combine(Path.GetFullPath(dir), ExperimentReport.ReportFile));
            return 0;
        }), cancellation));
        var results = new Option<string>("--results") { Description = "results.json of an earlier run.", Required = true };
        var reportOut = new Option<string>("--out") { Description = "Folder for report.md and the plots (default: the results file's folder)." };
        var report = new Command("report", "Render report.md and the plots again from a results.json.") { results, reportOut };
        report.SetAction(parse => CliErrors.Run(() =>
        {
            string file = parse.GetValue(results)!;
            var loaded = ExperimentReport.Read(file);
            string dir = parse.GetValue(reportOut) ?? Path.GetDirectoryName(Path.GetFullPath(file))!;
            ExperimentReport.WriteReport(loaded, dir);
            Console.Out.WriteLine(Path.Combine(Path.GetFullPath(dir), ExperimentReport.ReportFile));
            return 0;
        }));
        return new Command("experiment", "Evaluation experiments.") { run, report };
    }
}
