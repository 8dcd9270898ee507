"""Login-node side: configs, sbatch rendering, submission and run listing. Never imports TensorFlow."""
