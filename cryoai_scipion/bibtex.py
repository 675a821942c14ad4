"""
@inproceedings{Levy2022,
  title = {CryoAI: Amortized Inference of Poses for Ab Initio Reconstruction of 3D Molecular Volumes
           from Real Cryo-EM Images},
  author = {Levy, Axel and Poitevin, Fr{\'e}d{\'e}ric and Martel, Julien and Nashed, Youssef and
            Peck, Ariana and Miolane, Nina and Ratner, Daniel and Dunne, Mike and Wetzstein, Gordon},
  booktitle = {Computer Vision -- ECCV 2022},
  series = {Lecture Notes in Computer Science},
  volume = {13681},
  pages = {540--557},
  year = {2022},
  publisher = {Springer},
  doi = {10.1007/978-3-031-19803-8_32},
  url = {https://doi.org/10.1007/978-3-031-19803-8_32}
}
"""
